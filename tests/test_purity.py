"""Pure modules take clocks, ids, keys and seeds as arguments: they import no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import persona

PURE = ["events.py", "projections/__init__.py", "projections/base.py", "projections/profile.py",
        "projections/behavior.py", "insights.py"]
FORBIDDEN = {"os", "time", "random", "secrets", "sqlite3", "sqlite_utils", "persona.store", "persona.core",
             "persona.cli", "persona.eventlog", "persona.crypto", "socket", "uuid"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def random_draws(path: Path) -> set[str]:
    """Uses of a `random` attribute (numpy.random and the like): noise that is not OpenDP's."""
    return {ast.unparse(node) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == "random"}


def test_pure_modules_import_no_io() -> None:
    root = Path(persona.__file__).parent
    assert {str(p.relative_to(root)) for p in (root / "projections").glob("*.py")} <= set(PURE), (
        "a new projections module: folds are pure, list it in PURE"
    )
    for name in PURE:
        bad = {m for m in imported(root / name) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}
        assert not bad, f"{name} imports {sorted(bad)}"
        assert not random_draws(root / name), f"{name} draws randomness of its own: {sorted(random_draws(root / name))}"


def test_the_purity_check_finds_a_random_draw(tmp_path: Path) -> None:
    """Positive control: the check above sees numpy's generator however it is reached."""
    sample = tmp_path / "sample.py"
    sample.write_text("import numpy as np\nnoise = np.random.default_rng().laplace(0, 1)\n")
    assert random_draws(sample) == {"np.random"}
    assert "numpy" in imported(sample)


def test_only_settings_reads_the_environment() -> None:
    root = Path(persona.__file__).parent
    offenders = [p.name for p in root.rglob("*.py") if p.name != "settings.py" and "os.environ" in p.read_text()]
    assert offenders == []
