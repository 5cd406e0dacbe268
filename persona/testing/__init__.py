"""Made-up data for demos, tests and benchmarks; nothing in the library imports this package.

- `persona.testing.exports`: a messy, multi-source dataset with planted ground truth: the four
  exports the built-in sources read (shop orders, social, web clicks, app usage) and truth.json,
  `python -m persona.testing.exports --people N --out DIR` (scripts/generate).
- `persona.testing.planted`: canonical events of people with planted buying propensities, for
  training and testing models, `python -m persona.testing.planted --people N --out FILE`.
"""
