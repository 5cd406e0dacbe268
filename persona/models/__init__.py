"""Models and predictions (docs/models.md)."""

ERASED_SINCE = "trained on a person erased since: retrain it"  # why such a version is stale
