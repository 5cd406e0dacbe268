"""persona: user profiles kept as encrypted, append-only, per-person event logs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from persona.settings import Settings

__version__ = "0.1.0"

if TYPE_CHECKING:
    from persona.core import Persona

__all__ = ["Persona", "Settings", "__version__"]


def __getattr__(name: str) -> Any:
    """Persona, imported when first asked for: `import persona` (and so `persona --help`) loads
    no store."""
    if name == "Persona":
        from persona.core import Persona  # heavy: the store, cryptography and the event log load with it

        return Persona
    raise AttributeError(f"module 'persona' has no attribute {name!r}")
