"""The import graph points one way: the layers below are the only declaration of the order.

Every module under ``atrous/`` is parsed (imports at module level, inside functions and under
``TYPE_CHECKING`` alike; ``from . import x`` resolved; ``importlib.import_module("atrous...")``
with a literal name too). A module may import its own package, and packages of a lower layer; it
may not import a package of its own or a higher layer, nor a name starting with ``_`` (a private
module or object) of another package. ``atrous/__init__.py`` and ``atrous/__main__.py`` are the
facade, exempt: they load the public names of every layer. docs/development.md quotes the table.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "atrous"

# layer -> the sub-packages (and bottom modules) in it; each imports only from layers below it
LAYERS = {
    0: ("_checks", "_files", "_cache"),
    1: ("ops", "data"),
    2: ("analysis",),
    3: ("models", "viz"),
    4: ("streaming",),
    5: ("export",),
    6: ("engine",),
    7: ("cli",),
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
FACADE = ("atrous/__init__.py", "atrous/__main__.py")

def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``atrous/ops/layers.py`` -> ``atrous.ops.layers``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in ``source``; ``from a import b`` gives ``a.b``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one folder up per extra dot
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
            if any(alias.name == "*" for alias in node.names):
                found.append((node.lineno, base))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and _call_name(node.func) in ("import_module", "__import__"):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == "atrous" or name.startswith("atrous.")]


def _call_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def violations(module: str, imports: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """``(line, imported name, why)`` for each import of ``module`` against the layers."""
    own = module.split(".")[1]
    found = []
    for line, name in imports:
        parts = name.split(".")
        if len(parts) == 1 or parts[1] not in LAYER_OF:
            if not (len(parts) == 2 and parts[1].startswith("__")):  # __version__ is plain metadata
                found.append((line, name, "imports through the facade `atrous`, which hides the real edge"))
            continue
        target = parts[1]
        if target == own:
            continue
        if LAYER_OF[target] >= LAYER_OF[own]:
            found.append((line, name, f"{own} (layer {LAYER_OF[own]}) imports {target} (layer {LAYER_OF[target]})"))
        private = [part for part in parts[2:] if part.startswith("_") and not part.startswith("__")]
        if private:
            found.append((line, name, f"{own} imports {private[0]}, private to {target}"))
    return found


def _modules() -> list[tuple[Path, str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    return [(path, module_name(path)) for path in paths if str(path.relative_to(ROOT)) not in FACADE]


def test_imports_point_one_way():
    found = []
    for path, module in _modules():
        imports = imported_names(path.read_text(), module, is_package=path.name == "__init__.py")
        found += [f"{path.relative_to(ROOT)}:{line}: {name}: {why}" for line, name, why in violations(module, imports)]
    assert not found, "imports against the layers of tests/test_layering.py:\n" + "\n".join(found)


def test_every_package_has_a_layer():
    names = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
             if (path.is_dir() and (path / "__init__.py").exists()) or (path.suffix == ".py" and path.stem.startswith("_")
                                                                       and not path.stem.startswith("__"))}
    assert names == set(LAYER_OF), f"give each a layer in LAYERS: {sorted(names ^ set(LAYER_OF))}"


def test_bottom_modules_import_nothing_of_atrous_but_each_other():
    for name in LAYERS[0]:
        path = PACKAGE / f"{name}.py"
        imports = imported_names(path.read_text(), f"atrous.{name}")
        assert all(n.split(".")[1] in LAYERS[0] for _, n in imports), (name, imports)


def test_a_wrong_way_import_is_reported():
    source = (
        "from atrous._checks import check_int\n"  # the bottom: fine
        "from atrous.ops.padding import to_tuple\n"  # a lower layer: fine
        "from atrous.analysis import _fields\n"  # its own package's private module: fine
        "def late():\n"
        "    from atrous.engine.checkpoint import save_checkpoint\n"  # higher, inside a function
        "    from ..models.segmentation import _common\n"  # higher, relative, private
        "    from ..data import palette\n"  # a lower layer, relative: fine
        "    import importlib; importlib.import_module('atrous.viz')\n"  # higher, by name
        "from atrous.ops.layers import _CONV_BY_DIMS\n"  # lower, but private to ops
        "from atrous import receptive_field\n"  # through the facade
        "from atrous import __version__\n"  # metadata: fine
    )
    imports = imported_names(source, "atrous.analysis.fake")
    assert ("atrous.models.segmentation._common" in {name for _, name in imports})
    reported = {(line, name) for line, name, _ in violations("atrous.analysis.fake", imports)}
    assert reported == {(5, "atrous.engine.checkpoint.save_checkpoint"), (6, "atrous.models.segmentation._common"),
                        (8, "atrous.viz"), (9, "atrous.ops.layers._CONV_BY_DIMS"),
                        (10, "atrous.receptive_field")}
    # a sibling of the same layer is refused too: ops and data know nothing of each other
    assert violations("atrous.data.fake", [(1, "atrous.ops.padding")])


def test_relative_imports_resolve_from_a_package_and_a_module():
    assert imported_names("from . import layers", "atrous.ops", is_package=True) == [(1, "atrous.ops.layers")]
    assert imported_names("from .padding import to_tuple", "atrous.ops.layers") == [(1, "atrous.ops.padding.to_tuple")]
    assert imported_names("from .. import ops", "atrous.models.segmentation", is_package=True) == \
        [(1, "atrous.models.ops")]
    assert imported_names("from ... import ops", "atrous.models.segmentation.aspp") == [(1, "atrous.ops")]


def test_the_docs_quote_the_layers():
    text = (ROOT / "docs" / "development.md").read_text()
    for layer, names in LAYERS.items():
        row = f"| {layer} | " + ", ".join(f"`{name}`" for name in names) + " |"
        assert row in text, f"docs/development.md lacks the row {row!r}"
