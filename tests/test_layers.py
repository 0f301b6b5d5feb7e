"""The layers of ``src/fedloom``: every import points down, none closes a cycle, none reaches into
another package's private module.

Every ``import`` and ``from ... import`` counts, wherever it stands: at the top of a module,
inside a function, or under ``if TYPE_CHECKING:``. A unit is a package under ``fedloom`` (or a
top-level module); units of one layer never import each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fedloom"

LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "errors _io",
        "params",
        "messages",
        "data tracking",
        "strategy",
        "privacy secagg compression",
        "client server",
        "simulation transport models",
        "config",
        "recipes",
        "cli",
        "__main__ __init__",
    )
)
"""Bottom first. A unit may import only units of lower layers (and itself)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "_proto" not in p.parts}


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, str]]:
    """(imported module, the import as written) for every fedloom import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fedloom":
                    yield alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "fedloom":
                continue
            yield target, f"from {target} import ..."
            for alias in node.names:  # `from package import submodule`
                if f"{target}.{alias.name}" in known:
                    yield f"{target}.{alias.name}", f"from {target} import {alias.name}"


def _graph() -> dict[str, dict[str, str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: {target: how for target, how in _imports(name, path, known) if target in known}
        for name, path in modules.items()
    }


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"fedloom.{unit} is in no layer; add it to LAYERS in {__file__}")


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a self-import): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer() -> None:
    for module in _graph():
        _layer(_unit(module))


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_only_point_down() -> None:
    wrong = []
    for module, targets in _graph().items():
        unit = _unit(module)
        for target, how in targets.items():
            other = _unit(target)
            if other != unit and _layer(other) >= _layer(unit):
                wrong.append(f"{module}: {how} (layer {_layer(unit)} -> {_layer(other)})")
    assert wrong == [], "\n".join(wrong)


def test_no_import_of_another_packages_private_module() -> None:
    wrong = []
    for module, targets in _graph().items():
        for target, how in targets.items():
            private = any(part.startswith("_") for part in target.split(".")[2:])
            if private and _unit(target) != _unit(module):
                wrong.append(f"{module}: {how}")
    assert wrong == [], "\n".join(wrong)


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    # a lazy import and a type-only one both count, and so does a cycle through them
    graph = {"a": {"b": "lazy"}, "b": {"c": "top"}, "c": {"a": "TYPE_CHECKING"}, "d": {}}
    assert _cycles(graph) == [["a", "b", "c"]]
    path = tmp_path / "probe.py"
    path.write_text(
        "def f():\n    from fedloom.x import y\nif TYPE_CHECKING:\n    import fedloom.z\n"
    )
    found = dict(_imports("fedloom._layer_probe", path, {"fedloom.x.y"}))
    assert set(found) == {"fedloom.x", "fedloom.x.y", "fedloom.z"}
