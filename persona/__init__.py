"""persona: user profiles kept as encrypted, append-only, per-person event logs."""

__version__ = "0.1.0"

from persona.core import Persona  # noqa: E402
from persona.settings import Settings  # noqa: E402

__all__ = ["Persona", "Settings", "__version__"]
