"""Recommendations: what each person is likely to want next (docs/recommendations.md)."""

NAME = "recommendations"  # the registry's name for the recommender's versions
