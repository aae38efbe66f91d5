"""The shape of the code base, read from its source with ast: small modules, acyclic imports (counting
imports inside functions too), and a library that imports none of the tooling (fine-tuning, latency,
benchmarks, examples)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "python" / "kprune"
MAX_LINES = 400
#: Compiled modules (built from csrc/, maybe absent here): ``from kprune_ext import _C`` imports them.
COMPILED = {"kprune_ext._C"}


def modules_of(root: Path, package: str | None) -> dict[str, Path]:
    """Dotted module name -> file for every .py under ``root``; ``package`` names ``root`` (None: a folder
    of top-level scripts, whose sub-packages are not descended into)."""
    files = sorted(root.rglob("*.py")) if package else sorted(root.glob("*.py"))
    modules = {}
    for file in files:
        parts = list(file.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(([package] if package else []) + parts)] = file
    return modules


def imported_names(module: str, file: Path) -> list[tuple[str, str | None]]:
    """What ``file`` imports, anywhere in it (top level, functions, branches), as absolute
    (module, name) pairs: ``import a.b`` gives (a.b, None), ``from a import b`` (a, b)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.extend((base, alias.name) for alias in node.names)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges module -> modules of the same set that it imports; ``from a import b`` is an import of
    the submodule ``a.b`` when there is one (a compiled one too), else of ``a``."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, file in modules.items():
        for base, member in imported_names(name, file):
            submodule = f"{base}.{member}"
            target = submodule if submodule in modules or submodule in COMPILED else base
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_graph_helpers_find_cycles_through_function_level_and_relative_imports(tmp_path):
    """The checker itself: a cycle closed by an import inside a function, through a relative import."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b.g()\n")
    (pkg / "b.py").write_text("def g():\n    from pkg.a import f\n    return f\n")
    graph = import_graph(modules_of(pkg, "pkg"))
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(modules_of(pkg, "pkg"))) is None


def test_no_library_module_is_above_the_line_limit():
    sizes = {name: len(file.read_text(encoding="utf-8").splitlines())
             for name, file in modules_of(LIBRARY, "kprune").items()}
    assert len(sizes) > 10
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, f"modules above {MAX_LINES} lines: {too_long}"


@pytest.mark.parametrize("root,package", [
    (LIBRARY, "kprune"),
    (REPO / "kprune_ext", "kprune_ext"),
    (REPO / "benchmarks", None),
], ids=["kprune", "kprune_ext", "benchmarks"])
def test_import_graph_is_acyclic(root, package):
    graph = import_graph(modules_of(root, package))
    assert sum(len(targets) for targets in graph.values()) > 0  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_imports_no_tooling():
    """python/kprune neither holds nor imports fine-tuning, latency, benchmarks or examples code."""
    library = modules_of(LIBRARY, "kprune")
    assert not {"kprune.finetune", "kprune.latency"} & set(library)
    tooling = {"benchmarks", "examples", "finetune", "latency"}
    for folder in ("benchmarks", "examples"):
        tooling |= set(modules_of(REPO / folder, None))
        tooling |= {p.name for p in (REPO / folder).iterdir() if (p / "__init__.py").is_file()}
    offending = {}
    for name, file in library.items():
        targets = {base if member is None else f"{base}.{member}" for base, member in imported_names(name, file)}
        bad = sorted(t for t in targets if t.split(".")[0] in tooling
                     or t.startswith(("kprune.finetune", "kprune.latency")))
        if bad:
            offending[name] = bad
    assert not offending, f"library modules importing tooling: {offending}"
