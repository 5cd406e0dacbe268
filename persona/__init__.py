"""persona: user profiles kept as encrypted, append-only, per-person event logs."""

__version__ = "0.1.0"

from persona.core import Persona
from persona.settings import Settings

__all__ = ["Persona", "Settings", "__version__"]
