"""The package's layers, checked on every import of every module (top level, inside functions, type-only).

Front ends call only the client; the client knows no front end; the selector, the
gateway and the store know nothing of each other (README, "How the code is laid out").
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "oblix_jupyter"
LEAVES = {"errors", "render", "redaction"}  # import nothing of ours, so every layer may use them
ALLOWED = {  # a layer (first part of the module path) -> what else of ours it may import
    "frontends": {"client", "kernel", "frontends", ""},  # "": the package itself, for __version__
    "client": {"", "models", "store", "context", "kernel", "vectors", "sessions"},
    "vectors": {"context", "store"},
    "kernel": {"kernel", "context"},  # it builds the selector's inputs (context.inputs)
    "context": {"context"},
    "models": {"models"},
    "store": {"store"},
    "sessions": {"store"},
    "errors": set(),
    "render": set(),
    "redaction": set(),
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def imported(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every module of ours that ``path`` imports, as a path inside the package ("" for the package)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "oblix_jupyter" or node.module.startswith("oblix_jupyter.")):
                target = node.module.removeprefix("oblix_jupyter").lstrip(".")
            else:
                continue
            if not node.module:  # "from . import x": x may be a module, or a name the package defines
                found += [(node.lineno, _module_or_package(f"{target}.{alias.name}".strip("."))) for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("oblix_jupyter").lstrip(".")) for a in node.names if a.name.startswith("oblix_jupyter")]
    return found


def _module_or_package(target: str) -> str:
    place = PACKAGE.joinpath(*target.split("."))
    return target if place.with_suffix(".py").exists() or place.is_dir() else target.rpartition(".")[0]


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
