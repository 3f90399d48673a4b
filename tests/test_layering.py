"""The import graph points one way: the layers below are the only declaration of the order.

Every module under ``atrous/`` is parsed (imports at module level, inside functions and under
``TYPE_CHECKING`` alike; ``from . import x`` resolved; ``importlib.import_module`` and
``__import__`` with literal names too, relative or by keyword). A call whose module name is
computed is refused unless ``COMPUTED_IMPORTS`` explains it. A module may import its own package,
and packages of a lower layer; it may not import a package of its own or a higher layer (the
bottom modules, layer 0, import no atrous at all), nor a name starting with ``_`` (a private
module or object) of another package. Every sub-package and top-level module has a layer. ``atrous/__init__.py`` and ``atrous/__main__.py`` are the
facade, exempt: they load the public names of every layer. docs/development.md quotes the table.
"""

from __future__ import annotations

import ast
import importlib.util
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


IMPORT_CALLS = ("import_module", "__import__")


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from {'.' * level}{name} import ...`` written in ``module``."""
    anchor = module.split(".")
    anchor = anchor if is_package else anchor[:-1]
    anchor = anchor[: len(anchor) - level + 1]
    return ".".join(anchor + ([name] if name else []))


def _call_imports(call: ast.Call, module: str, is_package: bool) -> list[str] | None:
    """The names an ``import_module``/``__import__`` call loads, or None when they are not literals."""
    if _call_name(call.func) == "import_module":  # import_module(name, package=None)
        name, package = _argument(call, 0, "name"), _argument(call, 1, "package")
        text = _literal(name)
        if text is None or (package is not None and _literal(package) is None):
            return None
        if text.startswith("."):
            if package is None:
                return None
            return [importlib.util.resolve_name(text, _literal(package))]
        return [text]
    # __import__(name, globals=None, locals=None, fromlist=(), level=0)
    text = _literal(_argument(call, 0, "name"))
    fromlist, level = _argument(call, 3, "fromlist"), _argument(call, 4, "level")
    if text is None:
        return None
    if level is not None:
        if not (isinstance(level, ast.Constant) and type(level.value) is int):
            return None
        if level.value:
            text = _relative(module, is_package, level.value, text or None)
    items: list[str] = []
    if fromlist is not None and not (isinstance(fromlist, ast.Constant) and fromlist.value is None):
        if not isinstance(fromlist, (ast.List, ast.Tuple)) or any(_literal(e) is None for e in fromlist.elts):
            return None
        items = [_literal(e) for e in fromlist.elts]
    return [text] + [f"{text}.{item}" for item in items if item != "*"]


def _scopes(tree: ast.AST) -> dict[int, str]:
    """id of each node -> the innermost function (or class) around it; ``""`` at module level."""
    scope: dict[int, str] = {}
    for node in ast.walk(tree):  # breadth first: an inner function overwrites its outer one
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                if inner is not node:
                    scope[id(inner)] = node.name
    return scope


def computed_imports(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, enclosing function)`` of every ``import_module``/``__import__`` call whose module
    is not a string literal (``"atrous." + name``, a variable): no reader can tell what it loads."""
    tree = ast.parse(source, filename=module)
    scope = _scopes(tree)
    return sorted((node.lineno, scope.get(id(node), "")) for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and _call_name(node.func) in IMPORT_CALLS
                  and _call_imports(node, module, is_package) is None)


def imported_names(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of atrous in ``source``; ``from a import b`` gives
    ``a.b``, and ``import_module``/``__import__`` calls with literal names count (relative names
    and keywords resolved; :func:`computed_imports` reports the others)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _relative(module, is_package, node.level, node.module) if node.level else node.module or ""
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
            if any(alias.name == "*" for alias in node.names):
                found.append((node.lineno, base))
        elif isinstance(node, ast.Call) and _call_name(node.func) in IMPORT_CALLS:
            found += [(node.lineno, name) for name in _call_imports(node, module, is_package) or []]
    return [(line, name) for line, name in found if name == "atrous" or name.startswith("atrous.")]


def _call_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _has_no_layer(name: str) -> bool:
    """A sub-package or top-level module of atrous/ that LAYERS does not place."""
    exists = (PACKAGE / name / "__init__.py").exists() or (PACKAGE / f"{name}.py").exists()
    return exists and name not in LAYER_OF and name not in ("__init__", "__main__")


def violations(module: str, imports: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """``(line, imported name, why)`` for each import of ``module`` against the layers."""
    own = module.split(".")[1]
    if own not in LAYER_OF:
        return [(0, module, f"{own} has no layer: add it to LAYERS in tests/test_layering.py")]
    found = []
    for line, name in imports:
        parts = name.split(".")
        if len(parts) > 1 and _has_no_layer(parts[1]):
            found.append((line, name, f"{parts[1]} has no layer: add it to LAYERS in tests/test_layering.py"))
            continue
        if len(parts) == 1 or parts[1] not in LAYER_OF:
            if not (len(parts) == 2 and parts[1].startswith("__")):  # __version__ is plain metadata
                found.append((line, name, "imports through the facade `atrous`, which hides the real edge"))
            continue
        target = parts[1]
        if target == own:
            continue
        # one rule for every layer, the bottom included: _checks, _files and _cache import no atrous at all
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


def top_level_names(package: Path = PACKAGE) -> set[str]:
    """Every sub-package and every module ``atrous/*.py`` but the facade, public or private."""
    return {path.stem if path.is_file() else path.name for path in package.iterdir()
            if (path.is_dir() and (path / "__init__.py").exists())
            or (path.suffix == ".py" and path.stem not in ("__init__", "__main__"))}


def test_every_package_and_top_level_module_has_a_layer():
    names = top_level_names()
    assert names == set(LAYER_OF), f"give each a layer in LAYERS (or drop a stale one): {sorted(names ^ set(LAYER_OF))}"


# Calls that import a name computed at run time, each checked below by what it can load:
# (file, enclosing function) -> why it is allowed
COMPUTED_IMPORTS = {
    ("atrous/export/onnx.py", "require"): "optional third-party packages, named by literals at each call",
    ("atrous/cli/main.py", "build_parser"): "the subcommand modules of SUBCOMMANDS, all in atrous.cli",
}


def test_no_import_by_a_computed_name():
    found = set()
    for path, module in _modules():
        calls = computed_imports(path.read_text(), module, is_package=path.name == "__init__.py")
        found |= {(str(path.relative_to(ROOT)), function, line) for line, function in calls}
    unexplained = sorted(f"{file}:{line} (in {function or 'module level'})" for file, function, line in found
                         if (file, function) not in COMPUTED_IMPORTS)
    assert not unexplained, ("import_module/__import__ with a module name that is not a string literal, so this "
                             "test cannot see the edge; write the name out:\n" + "\n".join(unexplained))
    assert {(file, function) for file, function, _ in found} == set(COMPUTED_IMPORTS), "a stale COMPUTED_IMPORTS entry"


def test_the_allowed_computed_imports_load_what_they_say():
    from atrous.cli.main import SUBCOMMANDS

    assert all(name.startswith("atrous.cli.") for name in SUBCOMMANDS.values()), SUBCOMMANDS
    for path in sorted((PACKAGE / "export").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _call_name(node.func) == "require":
                name = _literal(node.args[0]) if node.args else None
                assert name is not None and name.split(".")[0] != "atrous", \
                    f"{path.relative_to(ROOT)}:{node.lineno}: require() needs a literal third-party name"


def test_bottom_modules_import_nothing_of_atrous():
    for name in LAYERS[0]:
        path = PACKAGE / f"{name}.py"
        assert imported_names(path.read_text(), f"atrous.{name}") == [], name
    # the main rule says the same: a bottom module importing another is a same-layer import
    assert violations("atrous._files", [(1, "atrous._checks.check_int")])


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


def test_import_calls_resolve_literal_relative_and_keyword_forms():
    source = (
        "import importlib\n"
        "importlib.import_module('.engine', 'atrous')\n"  # relative, with its package
        "importlib.import_module(name='atrous.engine')\n"  # keyword
        "importlib.import_module('..viz', package='atrous.analysis')\n"  # two dots, package by keyword
        "__import__('atrous.engine')\n"
        "__import__('atrous', fromlist=['viz'])\n"  # loads atrous.viz
        "__import__('engine', globals(), None, (), 2)\n"  # relative to atrous.analysis.fake's package's parent
        "importlib.import_module('numpy')\n"  # not atrous: fine
    )
    imports = imported_names(source, "atrous.analysis.fake")
    assert imports == [(2, "atrous.engine"), (3, "atrous.engine"), (4, "atrous.viz"), (5, "atrous.engine"),
                       (6, "atrous"), (6, "atrous.viz"), (7, "atrous.engine")]
    reported = {(line, name) for line, name, _ in violations("atrous.analysis.fake", imports)}
    assert {2, 3, 4, 5, 7} <= {line for line, _ in reported} and (6, "atrous.viz") in reported
    assert computed_imports(source, "atrous.analysis.fake") == []


def test_an_import_by_a_computed_name_is_reported():
    source = (
        "import importlib\n"
        "importlib.import_module('atrous.' + 'engine')\n"  # computed, even of literals
        "def load(name):\n"
        "    return importlib.import_module(name)\n"  # a variable
        "importlib.import_module('.engine', package=PACKAGE)\n"  # the package is a variable
        "importlib.import_module('.engine')\n"  # relative without a package: no module it names
        "__import__(f'atrous.{1}')\n"
        "__import__('atrous', fromlist=NAMES)\n"
        "__import__('engine', level=LEVEL)\n"
    )
    assert computed_imports(source, "atrous.analysis.fake") == [(2, ""), (4, "load"), (5, ""), (6, ""), (7, ""),
                                                               (8, ""), (9, "")]
    assert imported_names(source, "atrous.analysis.fake") == []


def test_a_module_without_a_layer_is_named(tmp_path):
    assert violations("atrous.newthing", [(1, "atrous._checks")]) == [
        (0, "atrous.newthing", "newthing has no layer: add it to LAYERS in tests/test_layering.py")]
    package = tmp_path / "atrous"
    (package / "ops").mkdir(parents=True)
    for path in ("__init__.py", "__main__.py", "_checks.py", "newthing.py", "ops/__init__.py"):
        (package / path).write_text("")
    assert top_level_names(package) == {"_checks", "newthing", "ops"}  # a public module counts too


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
