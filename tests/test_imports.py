"""jaxft's own imports run one way (read from the source with ast, every import, module- or function-level):

    command line (jaxft.main) -> tasks -> {train, models, data, peft}
    inference (predict, serve, explain, quantize) -> tasks -> models

No import circle, nothing imports the command-line module, the lower layers never import the upper ones,
and an import inside a function says why on its line (an optional dependency or start-up cost).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "jaxft"

# layer -> modules (prefixes) it must not import
FORBIDDEN = {
    "jaxft.models": ("jaxft.tasks", "jaxft.train", "jaxft.peft", "jaxft.predict", "jaxft.serve", "jaxft.explain",
                     "jaxft.quantize", "jaxft.main", "jaxft.sweep", "jaxft.api", "jaxft.hub"),
    "jaxft.data": ("jaxft.models", "jaxft.tasks", "jaxft.train", "jaxft.peft", "jaxft.predict", "jaxft.serve",
                   "jaxft.explain", "jaxft.quantize", "jaxft.main", "jaxft.api"),
    "jaxft.config": ("jaxft.models", "jaxft.tasks", "jaxft.train", "jaxft.peft", "jaxft.predict", "jaxft.serve",
                     "jaxft.main", "jaxft.api"),
    "jaxft.train": ("jaxft.tasks", "jaxft.peft", "jaxft.predict", "jaxft.serve", "jaxft.explain", "jaxft.quantize",
                    "jaxft.main", "jaxft.api"),
    "jaxft.peft": ("jaxft.tasks", "jaxft.predict", "jaxft.serve", "jaxft.explain", "jaxft.quantize", "jaxft.main", "jaxft.api"),
    "jaxft.evaluate": ("jaxft.tasks", "jaxft.predict", "jaxft.serve", "jaxft.explain", "jaxft.main", "jaxft.api"),
    "jaxft.tasks": ("jaxft.predict", "jaxft.serve", "jaxft.explain", "jaxft.quantize", "jaxft.main", "jaxft.sweep",
                    "jaxft.api"),
    "jaxft.hub": ("jaxft.tasks", "jaxft.predict", "jaxft.serve", "jaxft.main", "jaxft.api"),
    "jaxft.predict": ("jaxft.serve", "jaxft.main", "jaxft.api"),
    "jaxft.serve": ("jaxft.main", "jaxft.api"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(node: ast.AST, current: str) -> list[str]:
    """jaxft modules an import statement names (`from jaxft.x import y` names jaxft.x, and jaxft.x.y when y
    is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            package = current.split(".")[: len(current.split(".")) - node.level + (current in PACKAGES)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in names if name in MODULES]


PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for target in imported_modules(node, name) if target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_the_packages_imports():
    graph = import_graph()
    assert "jaxft.tasks.registry" in graph["jaxft.tasks.run"]
    assert "jaxft.tasks.ner" in graph["jaxft.tasks.registry"]
    assert "jaxft.models.hf" in graph["jaxft.models"]


def test_a_circle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_nothing_imports_the_command_line():
    graph = import_graph()
    assert [name for name, targets in graph.items() if "jaxft.main" in targets] == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_run_one_way(layer):
    graph = import_graph()
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items()
                   if name == layer or name.startswith(layer + ".")
                   for target in targets if target.startswith(FORBIDDEN[layer]))
    assert wrong == []


def test_imports_inside_functions_say_why():
    """An import in a function body is for an optional dependency or start-up cost; its line says which."""
    unexplained = []
    for name, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "#" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unexplained == []
