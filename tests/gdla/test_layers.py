"""The core's modules import each other without a cycle, function-level imports included.

The layers, bottom up: the contracts (errors, validation, problem, optimizer, capabilities, ...),
the registry, the run plan, the loop, the demo, the command line. A cycle means a lower layer
reaches up (a problem importing the demo, an optimizer importing the registry): this test reads
every ``import`` statement of ``gdla/*.py`` (not those under ``if TYPE_CHECKING:``, which never
run) and fails on the first cycle, naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gdla"


def _module_names() -> set[str]:
    return {f"gdla.{path.stem}" for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The ``gdla.*`` modules a module's code imports at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            elif node.module == "gdla":  # from gdla import registry: a submodule
                found.update(f"gdla.{alias.name}" for alias in node.names if f"gdla.{alias.name}" in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """``module -> the gdla modules it imports`` for every module of the package but ``__init__``."""
    modules = _module_names()
    return {
        name: _imports(ast.parse((PACKAGE / f"{name.split('.')[1]}.py").read_text(encoding="utf-8")), modules) - {name}
        for name in sorted(modules)
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_the_core_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in gdla/: " + " -> ".join(cycle or [])


#: The layers of docs/architecture.md, bottom up: a module may import its own layer and those below.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        ("errors", "validation", "options", "limits", "stopping", "result", "panels", "schedules", "mesh", "norms",
         "problem_repr"), 1
    ),
    **dict.fromkeys(("problem", "capabilities", "scaling", "declared_units", "optimizer", "hookspecs"), 2),
    **dict.fromkeys(
        ("backend", "memory", "distributed", "io", "ops", "ops_small", "_op_checks", "warm_start", "adjoints",
         "differentiation"),
        3,
    ),
    "agreement": 3,
    **dict.fromkeys(("registry", "building", "plugin_checks"), 4),
    "plan": 5,
    **dict.fromkeys(("loop", "report"), 6),
    **dict.fromkeys(
        ("demo", "plotting", "testing", "testing_units", "interrupts", "cli_parse", "commands", "cli", "__main__"), 7
    ),
}


def test_every_module_has_a_layer() -> None:
    missing = sorted(name for name in import_graph() if name.split(".")[1] not in LAYERS)
    assert not missing, f"place these modules in a layer (docs/architecture.md and LAYERS here): {missing}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module} (layer {LAYERS[module[5:]]}) imports {child} (layer {LAYERS[child[5:]]})"
        for module, children in import_graph().items()
        for child in sorted(children)
        if LAYERS.get(child[5:], 0) > LAYERS.get(module[5:], 99)
    ]
    assert not upward, "\n".join(upward)


def test_the_detector_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "import gdla.loop\ndef f():\n    from gdla.demo import x\nif TYPE_CHECKING:\n    import gdla.cli\n"
    tree = ast.parse(source)
    assert _imports(tree, {"gdla.loop", "gdla.demo", "gdla.cli"}) == {"gdla.loop", "gdla.demo"}
