"""The package's own import graph has no cycles: a stage imports the stages below it, never back.

Walks every module of ``gl_retrieval`` with ``ast`` and collects each import of a
``gl_retrieval`` module, wherever it stands (module level, inside a function, or under
``TYPE_CHECKING``): a lazy or type-only import back is still a dependency back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gl_retrieval

ROOT = Path(gl_retrieval.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import submodule` depends on the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package() -> None:
    graph = _graph()
    assert "gl_retrieval.pipeline" in graph
    assert "gl_retrieval.storage.postgres.store" in graph
    assert "gl_retrieval.config" in graph["gl_retrieval.pipeline"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles in gl_retrieval: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_package_root_holds_at_most_eight_modules() -> None:
    root = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(root) <= 8, f"{len(root)} modules at the package root: {root}"


def test_no_module_in_a_folder_imports_the_package_root() -> None:
    """The arrow runs down: gl_retrieval/__init__ re-exports the rooms; no room imports it back
    (``from gl_retrieval import X`` for a name the root defines, ``import gl_retrieval``)."""
    graph = _graph()
    back = sorted(
        name
        for name, deps in graph.items()
        if "." in name.removeprefix("gl_retrieval.") and "gl_retrieval" in deps
    )
    assert back == [], f"modules that import the package root: {back}"
