"""The package's layering: no import cycle of any kind, and every arrow points down.

The import graph is built from the source with ``ast`` (no module is run), counting every
import of ``namd.*``: module-level and function-level ones (an import hidden inside a function
is still a dependency, and hiding one is how a cycle usually survives), those under
``if TYPE_CHECKING:`` (a type-only circle still ties two modules' meanings together: the shared
type belongs below both), and ``importlib.import_module`` calls whose name is a literal (an
f-string counts as its literal head, e.g. the package it imports from).
Then: nothing below the CLI imports it, and neither inference nor evaluation reaches into
``namd.training``: using or judging a trained model must not need the code that trains it.
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


def _import_module_name(node: ast.AST) -> str | None:
    """The module an ``importlib.import_module(...)`` call names, when its argument is a literal
    (for an f-string, the literal text before its first field, up to the last dot)."""
    if not (isinstance(node, ast.Call) and node.args):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module":
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rpartition(".")[0] or None
    return None


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The namd modules ``name`` imports anywhere in its body, functions included."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if (dynamic := _import_module_name(node)) is not None:
            targets = [dynamic]
        elif isinstance(node, ast.Import):
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


def test_graph_sees_function_level_type_only_and_importlib_imports(tmp_path) -> None:
    """The graph builder counts an import inside a function (the usual hiding place), one under
    ``if TYPE_CHECKING:`` and an ``importlib.import_module`` call with a literal name."""
    graph = {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"namd.x.y": {"namd.x"}, "namd.x": {"namd.x.y"}}) is None
    known = {"namd.a", "namd.b", "namd.c", "namd.d", "namd.e", "namd.e.f"}
    source = tmp_path / "m.py"
    source.write_text("import importlib\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    import namd.c\ndef f():\n    from namd.b import thing\n"
                      "    importlib.import_module('namd.d')\n"
                      "    importlib.import_module(f'namd.e.{thing}')\n")
    assert _imports("namd.m", source, known) == {"namd.b", "namd.c", "namd.d", "namd.e"}
    assert _resolve("namd.b.thing", known) == "namd.b"
    built = import_graph()
    assert built["namd.inference.sampler"], "the graph found no imports at all"
    assert "namd.cli.commands" in built["namd.cli.main"], "importlib calls are not followed"


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


def test_inference_and_evaluation_do_not_import_training() -> None:
    """No module of namd.inference or namd.evaluation reaches a namd.training module, not even
    through the modules it imports: using or judging a model needs none of the training code."""
    graph = import_graph()
    offenders = {m: _training(_reachable(m, graph)) for m in graph
                 if m.startswith(("namd.inference", "namd.evaluation"))}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_nothing_below_the_cli_imports_it() -> None:
    """namd.cli is the top layer: no other module of namd imports any part of it."""
    graph = import_graph()
    up = {m: sorted(d for d in deps if d == "namd.cli" or d.startswith("namd.cli."))
          for m, deps in graph.items() if not (m == "namd.cli" or m.startswith("namd.cli."))}
    assert {m: d for m, d in up.items() if d} == {}


def test_the_package_root_holds_only_the_public_api() -> None:
    """Every module lives in a folder named after its role; the root keeps __init__.py."""
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]
