"""The package's layering: no import cycles, and sampling stays off training.

The import graph is built from the source with ``ast`` (no module is run),
counting both module-level and function-level imports of ``namd.*``: an
import hidden inside a function is still a dependency, and hiding one is how
a cycle usually survives.  Imports under ``if TYPE_CHECKING:`` are left out: they never run.
Sampling and the ``NAMDPipeline`` object must not
reach into ``namd.training``: using a trained model must not need the code
that trains it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "namd"


def _module_name(path: Path) -> str:
    """Dotted module name of a source file under src/ (packages drop __init__)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, known: set[str]) -> str | None:
    """The known module an imported name lives in (``a.b.c`` may be a name in ``a.b``)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.AST) -> bool:
    """Whether `node` is an ``if TYPE_CHECKING:`` block (imports for annotations only)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of a module, functions included, except the bodies of ``if TYPE_CHECKING:``
    (never executed, so not a dependency at run time)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The namd modules ``name`` imports anywhere in its body, functions included."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            module = _resolve(target, known)
            if module is not None and module != name and target.startswith("namd"):
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the namd modules it imports."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _is_parent_package(module: str, dependency: str) -> bool:
    """Whether ``dependency`` is a package containing ``module`` (always imported first)."""
    return module.startswith(dependency + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated last), or None.

    Edges to a module's own parent packages are left out: Python imports
    a package before its submodules, so ``namd.x.y -> namd.x`` cannot close
    a cycle by itself and is how ``__init__`` re-exports work.
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if _is_parent_package(node, dep):
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_graph_sees_function_level_imports() -> None:
    """The graph builder counts an import inside a function (the usual hiding place)."""
    graph = {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"namd.x.y": {"namd.x"}, "namd.x": {"namd.x.y"}}) is None
    known = {"namd.a", "namd.b", "namd.c"}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import namd.c\n"
                     "def f():\n    from namd.b import thing\n")
    names = [n for n in _runtime_nodes(tree) if isinstance(n, ast.ImportFrom)]
    assert sorted(n.module for n in names) == ["namd.b", "typing"]
    assert _resolve("namd.b.thing", known) == "namd.b"
    built = import_graph()
    assert built["namd.sampling"], "the graph found no imports at all"


def test_no_import_cycles() -> None:
    """No module of namd imports itself back through others."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _reachable(module: str, graph: dict[str, set[str]]) -> set[str]:
    """Every namd module that importing ``module`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _training(modules: set[str]) -> list[str]:
    """The namd.training modules among ``modules``."""
    return sorted(m for m in modules if m == "namd.training" or m.startswith("namd.training."))


def test_sampling_does_not_import_training() -> None:
    """Sampling reaches no namd.training module, not even through the modules it imports."""
    graph = import_graph()
    offenders = {m: _training(_reachable(m, graph)) for m in ("namd.sampling", "namd.sampling_io")}
    assert offenders == {"namd.sampling": [], "namd.sampling_io": []}, offenders


def test_pipeline_object_does_not_import_training() -> None:
    """namd.model (NAMDPipeline) and namd.predict reach no namd.training module, not even
    through the modules they import: inference needs no training code."""
    graph = import_graph()
    offenders = {m: _training(_reachable(m, graph)) for m in ("namd.model", "namd.predict")}
    assert offenders == {"namd.model": [], "namd.predict": []}, offenders
