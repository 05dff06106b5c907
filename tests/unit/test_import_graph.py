"""The import graph of the ris package has no cycle, and ris.preemption is a leaf.

The graph is read from the source with the stdlib `ast` module, nothing is imported:

- a node is a module under src/ris (a package is its __init__.py);
- A -> B when running A imports B: every import statement in A counts, at module level, inside
  a function or under an `if`/`try` alike (an import moved into a function only postpones the
  loop, it does not remove it); relative imports are resolved; `from P import x` is an edge to
  P.x when that is a module, else to P;
- importing P.x first runs P's __init__.py (and those of the packages above it), so those are
  edges too, except for the packages that contain A, which are already running when A runs.

A cycle is a set of modules that can each reach all the others along edges (a strongly
connected component of two or more modules, or one importing itself). Python tolerates such a
loop only as long as the modules happen to be imported in a lucky order, or the import that
closes it waits in a function; neither is allowed here. Imports of other packages (torch, ray,
pydantic, ...) are not ris modules and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `src`, by dotted name."""
    names = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _packages_above(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imported(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The modules of the graph that running `module` imports, each import statement counted."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                above = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*above, base] if base else above)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                    # `from P import sub` runs P first unless P already contains this module.
                    if base not in _packages_above(module) and base != module:
                        found.add(base)
                else:
                    found.add(base)  # a name defined in P, even P being a package around us
    edges: set[str] = set()
    for target in found & set(modules):
        edges.add(target)
        edges |= _packages_above(target) - _packages_above(module) - {module}
    return edges


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(src, package)
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that are cycles (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(graph: Mapping[str, set[str]], component: list[str]) -> str:
    inside = set(component)
    return "; ".join(f"{a} -> {', '.join(sorted(graph[a] & inside))}" for a in component)


def test_the_ris_package_has_no_import_cycle() -> None:
    graph = import_graph(SRC, "ris")
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(graph, c) for c in found)


def test_preemption_imports_nothing_from_ris_outside_itself() -> None:
    graph = import_graph(SRC, "ris")
    inside = {m for m in graph if m == "ris.preemption" or m.startswith("ris.preemption.")}
    assert inside >= {"ris.preemption", "ris.preemption.board", "ris.preemption.policy"}
    outside = {f"{m} -> {t}" for m in inside for t in graph[m] - inside}
    assert not outside, sorted(outside)


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    # A small package whose loops hide where a reader of module-level imports would miss them.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import A\n",
        "a.py": "A = 1\ndef f():\n    from . import b\n",  # function-level and relative
        "b.py": "from pkg.sub.c import C\n",
        "sub/__init__.py": "from pkg import a\n",  # runs when pkg.sub.c is imported
        "sub/c.py": "import os\nC = 2\n",
        "d.py": "from pkg.d import D\nD = 3\n",  # a module importing itself
        "e.py": "from pkg.sub import c\n",  # no loop: e is imported by nobody
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c", "pkg.sub"}
    assert graph["pkg.sub.c"] == set()  # os is not a module of the package
    assert graph["pkg.e"] == {"pkg.sub", "pkg.sub.c"}
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b", "pkg.sub"], ["pkg.d"]]
