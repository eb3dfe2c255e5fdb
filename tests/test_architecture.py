"""The import graph of the project's packages: no circles, and the layers each package promises.

Built from the source with ``ast`` (nothing is imported). Every import statement counts, wherever it is: at the
top of a module, inside a function, under ``if TYPE_CHECKING`` or in a ``try``: a deferred import still ties the
two modules together. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
importing ``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``, so that is an edge too.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jojoscl_dist", "tune", "bench")


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    modules = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = f
    return modules


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of everything ``module`` imports; ``from m import x`` gives ``m.x``."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found += [(source if alias.name == "*" else f"{source}.{alias.name}", node.lineno)
                      for alias in node.names]
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    modules = find_modules(root, packages)
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for name, line in imported_names(module, path):
            parts = name.split(".")
            # the module named (longest known prefix: 'from pkg import func' is pkg itself) ...
            found = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules),
                         None)
            if found is None or found == module:
                continue
            graph[module].setdefault(found, line)
            # ... and each package __init__ above it that importing it runs: those this module is not inside
            above = found.split(".")[:-1]
            for pkg in (".".join(above[:i]) for i in range(1, len(above) + 1)):
                if pkg in modules and pkg != module and not module.startswith(pkg + "."):
                    graph[module].setdefault(pkg, line)
    return graph


def external_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {top-level name of every import (project or not): line}."""
    out: dict[str, dict[str, int]] = {}
    for module, path in find_modules(root, packages).items():
        out[module] = {}
        for name, line in imported_names(module, path):
            out[module].setdefault(name.split(".")[0], line)
    return out


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest circle per strongly connected component (Tarjan), each as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        start = min(comp)
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:  # breadth first, inside the component, back to start
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, {})):
                    if w in comp and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def edges_from(graph: dict[str, dict[str, int]], src: str, dst: tuple[str, ...]) -> list[str]:
    """'a -> b (line n)' for each edge from a module in package ``src`` to one in any of ``dst``."""
    def inside(m: str, pkg: str) -> bool:
        return m == pkg or m.startswith(pkg + ".")

    return [f"{a} -> {b} (line {line})" for a, targets in sorted(graph.items()) if inside(a, src)
            for b, line in sorted(targets.items()) if any(inside(b, d) for d in dst)]


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_the_graph_sees_the_project(graph):
    """Guards the rules below against an empty or blind graph: known edges of each kind are found."""
    assert len(graph) > 40
    assert "jojoscl_dist.data.dataset" in graph["jojoscl_dist.train.run"]  # module-level from-import
    assert "jojoscl_dist.outputs.run_dir" in graph["jojoscl_dist.train.run"]  # 'from pkg import submodule'
    assert "jojoscl_dist.train.ray_session" in graph["jojoscl_dist.train.run"]  # inside a function
    assert "jojoscl_dist.model" in graph["jojoscl_dist.data.dataset"]  # the package __init__ that runs


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(describe(c, graph) for c in cycles)


def package_graph(graph: dict[str, dict[str, int]], roots: tuple[str, ...] = ("jojoscl_dist",)) -> dict[str, dict]:
    """The graph between packages: a module of ``roots`` belongs to its subpackage or is one (``jojoscl_dist.data``,
    ``jojoscl_dist.prepare``), any other to its top-level package (``tune``); each edge names one module edge."""
    def package(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if parts[0] in roots else parts[0]

    out: dict[str, dict] = {}
    for a, targets in graph.items():
        out.setdefault(package(a), {})
        for b, line in targets.items():
            if package(b) != package(a):
                out[package(a)].setdefault(package(b), f"{a} (line {line}) imports {b}")
    return out


def test_no_package_import_cycles(graph):
    """Packages are layers too: no circle through their modules even where no module imports itself back."""
    pg = package_graph(graph)
    cycles = find_cycles(pg)
    assert not cycles, "package import circles:\n" + "\n".join(
        "; ".join(pg[a][b] for a, b in zip(c, c[1:])) for c in cycles)


def test_train_imports_nothing_from_bench_or_tune(graph):
    bad = edges_from(graph, "jojoscl_dist.train", ("bench", "tune"))
    assert not bad, "train/ imports from bench/ or tune/:\n" + "\n".join(bad)


def test_data_imports_nothing_from_train_or_outputs(graph):
    bad = edges_from(graph, "jojoscl_dist.data", ("jojoscl_dist.train", "jojoscl_dist.outputs"))
    assert not bad, "data/ imports from train/ or outputs/:\n" + "\n".join(bad)


def private_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """'module imports name (line n)' for each leading-underscore name one project module takes from another."""
    modules = find_modules(root, packages)
    bad = []
    for module, path in modules.items():
        for name, line in imported_names(module, path):
            source, _, leaf = name.rpartition(".")
            if (source.split(".")[0] in packages and leaf.startswith("_") and not leaf.startswith("__")
                    and source != module):
                bad.append(f"{module} imports {name} (line {line})")
    return bad


def test_no_module_takes_another_modules_private_names():
    """A leading underscore keeps a helper inside its module; what another module needs has a public name."""
    bad = private_imports()
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_predict_reaches_nothing_of_training_but_the_embedding(graph):
    """New cells need the model, the preprocessing and the final clustering, not the trainer."""
    assert sorted(m for m in graph["jojoscl_dist.predict"] if m.startswith("jojoscl_dist.train")) == [
        "jojoscl_dist.train", "jojoscl_dist.train.embed"]


@pytest.mark.parametrize("package", ["jojoscl_dist.losses", "jojoscl_dist.model"])
def test_losses_and_model_import_no_ray(graph, package):
    """Pure torch: no ray, directly or through a project module they import."""
    ext = external_imports()
    reach, todo = set(), [m for m in graph if m == package or m.startswith(package + ".")]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += list(graph[m])
    bad = [f"{m} (line {ext[m]['ray']})" for m in sorted(reach) if "ray" in ext[m]]
    assert not bad, f"{package} reaches ray through: " + ", ".join(bad)


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_a_deliberate_circle_is_found(tmp_path):
    """The checks see circles made of function-level, relative and 'from pkg import submodule' imports, and the
    package __init__ an import runs."""
    _write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from .c import g\n",
        "pkg/c.py": "import pkg.a\ndef g():\n    pass\n",
        "pkg/sub/__init__.py": "from pkg.sub.leaf import x\n",
        "pkg/sub/leaf.py": "x = 1\n",
        "pkg/other.py": "from pkg.sub.leaf import x\n",
        "pkg/clean.py": "import os\nfrom pkg import other\n",
        "pkg/peek.py": "from pkg.sub.leaf import _hidden, __version__\nfrom . import _c\n",
    })
    g = import_graph(tmp_path, ("pkg",))
    assert g["pkg.a"] == {"pkg.b": 1} and g["pkg.b"] == {"pkg.c": 2} and g["pkg.c"] == {"pkg.a": 1}
    assert set(g["pkg.other"]) == {"pkg.sub.leaf", "pkg.sub"}  # importing the leaf runs pkg/sub/__init__.py
    assert g["pkg.sub"] == {"pkg.sub.leaf": 1}  # its own submodule: no edge back to itself
    cycles = find_cycles(g)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert describe(cycles[0], g) == "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 1) -> pkg.a"
    # the same rules flag a layer crossed inside a function
    assert edges_from(g, "pkg.b", ("pkg.c",)) == ["pkg.b -> pkg.c (line 2)"]
    assert private_imports(tmp_path, ("pkg",)) == ["pkg.peek imports pkg.sub.leaf._hidden (line 1)",
                                                   "pkg.peek imports pkg._c (line 2)"]


def test_a_package_circle_without_a_module_circle_is_found(tmp_path):
    _write_tree(tmp_path, {"pkg/__init__.py": "", "pkg/p1/__init__.py": "", "pkg/p1/a.py": "from pkg.p2 import b\n",
                           "pkg/p2/__init__.py": "", "pkg/p2/b.py": "", "pkg/p2/c.py": "import pkg.p1.a\n"})
    g = import_graph(tmp_path, ("pkg",))
    assert find_cycles(g) == []
    pg = package_graph(g, ("pkg",))
    assert find_cycles(pg) == [["pkg.p1", "pkg.p2", "pkg.p1"]]
    assert pg["pkg.p2"]["pkg.p1"] == "pkg.p2.c (line 1) imports pkg.p1.a"
