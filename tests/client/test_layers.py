"""The package's layers, checked on every import of every module (top level, inside functions, type-only).

Front ends call only the client; the client knows no front end; the selector, the
gateway and the store know nothing of each other (README, "How the code is laid out").
And no module imports itself round a circle, however long: a circle means neither side
can be read, tested or replaced alone.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "oblix_jupyter"
LEAVES = {"errors", "render", "redaction"}  # import nothing of ours, so every layer may use them
ALLOWED = {  # a layer (first part of the module path) -> what else of ours it may import
    "sdk": {"client", "frontends"},  # the SDK's OblixClient: the client plus start_chat, which opens a front end
    "frontends": {"client", "kernel", "frontends", ""},  # "": the package itself, for __version__
    "client": {"models", "store", "context", "kernel", "sessions", "turn", "admin", "attachments"},  # never the package: it names the front ends
    "turn": {"models", "store", "context", "kernel", "sessions", "attachments"},  # the client's layer: what a turn needs, below the facade
    "attachments": {"models", "kernel"},  # the turn's images: prepared by the gateway's side, as the kernel kept them
    "admin": {"models", "store", "context", "kernel", "sessions"},
    "kernel": {"kernel", "context"},  # it builds the selector's inputs (context.inputs)
    "context": {"context"},
    "models": {"models"},
    "store": {"store"},
    "sessions": {"store"},
    "errors": set(),
    "render": set(),
    "redaction": set(),
}


def module_name(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def imported(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> list[tuple[int, str]]:
    """Every module of ours that ``path`` imports, as a path inside the package ("" for the package).

    ``from .a import b`` counts as an import of ``a.b`` when that is a module, else of ``a``.
    """
    name = module_name(path, root)
    parts = name.split(".") if name else []
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == root.name or node.module.startswith(root.name + ".")):
                target = node.module.removeprefix(root.name).lstrip(".")
            else:
                continue
            found += [(node.lineno, _module_or_package(f"{target}.{alias.name}".strip("."), root)) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix(root.name).lstrip(".")) for a in node.names if a.name.split(".")[0] == root.name]
    return found


def _module_or_package(target: str, root: pathlib.Path) -> str:
    place = root.joinpath(*target.split("."))
    return target if place.with_suffix(".py").exists() or place.is_dir() else target.rpartition(".")[0]


def import_cycles(root: pathlib.Path) -> list[list[str]]:
    """Each circle of imports among the modules under ``root``: one path round it, its first module repeated at the end.

    Every import counts, wherever it is written: one inside a function closes the circle
    as soon as it runs, and one under TYPE_CHECKING is a circle for the reader. Modules
    tangled in several circles are one knot (a strongly connected component), shown by
    one of its circles.
    """
    graph = {
        module_name(path, root): {target for _, target in imported(path, root)}
        for path in root.rglob("*.py")
        if "labextension" not in path.parts
    }
    reaches = {module: _reachable(graph, module) for module in graph}
    knots = {frozenset(m for m in reaches[module] if module in reaches[m]) for module in graph if module in reaches[module]}
    return [_path_round(graph, sorted(knot)[0], knot) for knot in sorted(knots, key=sorted)]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules ``start`` imports, directly or through others (itself only by a circle)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module in graph and module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def _path_round(graph: dict[str, set[str]], start: str, knot: frozenset[str]) -> list[str]:
    """A shortest path of imports from ``start`` back to itself, through the modules of its knot."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while start not in came_from:
        following = []
        for module in frontier:
            for target in sorted(graph[module] & knot):
                if target not in came_from:
                    came_from[target] = module
                    following.append(target)
        frontier = following
    path = [start]
    while len(path) == 1 or path[-1] != start:
        path.append(came_from[path[-1]])
    return path[::-1]


def layer_of(target: str) -> str:
    return target.split(".")[0] if target else ""


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "labextension" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "__init__")
def test_every_import_respects_the_layers(path):
    name = module_name(path)
    if not name:  # the package's own __init__ names the public API lazily
        return
    layer = layer_of(name)
    allowed = ALLOWED[layer] | LEAVES | {layer}
    wrong = []
    for line, target in imported(path):
        target_layer = layer_of(target)
        if target_layer == "" and layer != "frontends" and layer != "client":
            wrong.append(f"line {line}: the package itself")
        elif target_layer not in allowed and target_layer != "":
            wrong.append(f"line {line}: {target or 'oblix_jupyter'}")
    assert not wrong, f"oblix_jupyter.{name} ({layer}) imports across the layers: " + "; ".join(wrong)


def test_the_checker_sees_imports_inside_functions_and_type_checking_blocks(tmp_path):
    """A test that could not fail would prove nothing: plant a forbidden import and see it caught."""
    store = PACKAGE / "store" / "formats.py"
    found = {target for _, target in imported(store)}
    assert "errors" in found and "render" in found  # top-level, relative
    panel = PACKAGE / "frontends" / "panel.py"
    assert "client" in {target for _, target in imported(panel)}  # a TYPE_CHECKING import
    assert "frontends.panel" in {target for _, target in imported(PACKAGE / "frontends" / "chat.py")}  # inside a function
    assert layer_of("models.gateway") not in ALLOWED["context"] | LEAVES


def test_no_module_of_the_package_imports_itself_round_a_circle():
    cycles = import_cycles(PACKAGE)
    shown = ["oblix_jupyter" + " -> oblix_jupyter".join(f".{m}" if m else "" for m in cycle) for cycle in cycles]
    assert not cycles, "import circles (break each by moving what both sides need into a module of its own):\n" + "\n".join(shown)


def test_the_circle_finder_sees_circles_through_functions_type_checking_and_the_package(tmp_path):
    """Plant circles a module-level scan would miss and see each one named."""
    package = tmp_path / "planted"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("def load():\n    from .inner import late\n")
    (package / "inner" / "__init__.py").write_text("")
    (package / "inner" / "late.py").write_text("from .. import load\n")  # late -> package -> (in a function) late
    (package / "shared.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("def f():\n    import planted.a\n")
    (package / "alone.py").write_text("from .inner import late\nfrom . import shared\n")
    cycles = {frozenset(cycle) for cycle in import_cycles(package)}
    assert cycles == {frozenset({"", "inner.late"}), frozenset({"a", "b"})}
