"""Projections: pure, versioned folds over a person's events (docs/design.md, invariant 5).

Every fold here is order-independent: its state is a set of selections (the best claim
by a total order), exact sums and sorted collections, so the same events give the same
state whatever order they arrive in. Clocks arrive as arguments (`as_of`), never read.
"""

from persona.projections.base import Projection, replay
from persona.projections.behavior import FEATURES, BehaviorConfig, BehaviorFeatures
from persona.projections.profile import ATTRIBUTES, FusionPolicy, ProfileAttributes

__all__ = ["ATTRIBUTES", "FEATURES", "BehaviorConfig", "BehaviorFeatures", "FusionPolicy", "ProfileAttributes",
           "Projection", "replay"]
