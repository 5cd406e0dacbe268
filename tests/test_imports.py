"""Imports run one way: no cycle inside persona/, the store imports nothing above it, the
command line is imported by nobody, and neither the API nor the models know click.

The graph is read with `ast` from the source, every import counted (module level and inside
functions alike) except those under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import persona

ROOT = Path(persona.__file__).parent


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those inside `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for other in node.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported_names(source: str, module: str, *, package: bool) -> set[str]:
    """The absolute names a module's source imports, relative imports resolved against `module`:
    `import a.b` gives a.b; `from a import b` gives a.b, or a when a has no module b."""
    names: set[str] = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            anchor = parts if package else parts[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names.update(f"{base}:{alias.name}" for alias in node.names)  # resolved by import_graph
    return names


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the package it imports."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        edges = set()
        for name in imported_names(path.read_text(), module, package=path.name == "__init__.py"):
            base, _, attribute = name.partition(":")
            if base != top and not base.startswith(top + "."):
                continue
            if attribute and f"{base}.{attribute}" in paths:  # `from a import b`, b a module of a
                edges.add(f"{base}.{attribute}")
            elif base in paths:  # `import a`, or `from a import b` with b a function or class of a
                edges.add(base)
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (a path that returns to its start) for each group of modules that import each
    other."""
    return [_a_cycle(graph, group) for group in entangled(graph)]


def entangled(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The strongly connected groups of modules (each reaches every other), found with Tarjan's
    algorithm; a module importing itself is a group of one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _a_cycle(graph: Mapping[str, Iterable[str]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, within the group."""
    start = min(group)
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        later = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in group and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    later.append(nxt)
        frontier = later
    raise AssertionError("a strongly connected group always holds a cycle")


def shown(graph: Mapping[str, Iterable[str]]) -> str:
    return "\n".join(f"{' -> '.join(_a_cycle(graph, group))}  (the group: {', '.join(sorted(group))})"
                     for group in entangled(graph))


STORE = "persona.store"
STORE_MAY_IMPORT = {"persona.errors"}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def upward_store_imports(graph: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    return {m: sorted(t for t in targets if not _in(t, STORE) and t not in STORE_MAY_IMPORT)
            for m, targets in graph.items() if _in(m, STORE)
            if any(not _in(t, STORE) and t not in STORE_MAY_IMPORT for t in targets)}


# -- the finder itself: it finds what it must -------------------------------------------------------
def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert sorted(map(tuple, cycles(graph))) == [("a", "b", "c", "a"), ("e", "e")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_imports_in_functions_and_relative_ones_but_not_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                              "def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    (pkg / "sub" / "b.py").write_text("from pkg.sub import x\n")  # an attribute, not a module
    assert import_graph(pkg)["pkg.sub.b"] == {"pkg.sub"}


# -- persona ------------------------------------------------------------------------------------------
def test_no_import_cycle_inside_persona() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the positive control: every module is read"
    assert not entangled(graph), "import cycles:\n" + shown(graph)


def test_the_store_imports_nothing_above_it() -> None:
    """Nothing of persona but persona.errors, itself a leaf — in functions too."""
    graph = import_graph()
    assert any(_in(t, STORE) for t in graph["persona.store.sqlite"]), "the positive control: store edges are seen"
    assert upward_store_imports(graph) == {}
    assert graph["persona.errors"] == set()


def test_the_api_and_the_models_do_not_know_click() -> None:
    offenders = []
    for package in ("api", "models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            names = imported_names(path.read_text(), module, package=path.name == "__init__.py")
            if any(_in(name.partition(":")[0], "click") for name in names):
                offenders.append(module)
    assert offenders == []


def test_nothing_outside_the_command_line_imports_it() -> None:
    """But `python -m persona`, which runs it."""
    graph = import_graph()
    offenders = sorted(m for m, targets in graph.items() if not _in(m, "persona.cli") and m != "persona.__main__"
                       and any(_in(t, "persona.cli") for t in targets))
    assert offenders == []


def test_the_command_line_and_the_api_do_not_touch_the_store() -> None:
    """They (and the console) call the library (persona.services, persona.tokens, persona.reading,
    ...), which alone holds a Persona's recorder."""
    offenders = [f"{path.relative_to(ROOT.parent)}:{n}" for package in ("cli", "api", "console")
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), start=1) if "recorder" in line]
    assert offenders == []
