"""``atrous --help``: fast (torch is not imported to print it), a description and the defaults of
every subcommand, and the model names that ``rf --help`` lists without importing the models."""

import argparse
import subprocess
import sys

import pytest

from atrous.cli.main import SUBCOMMANDS, build_parser

HEAVY = ("torch", "numpy", "PIL", "matplotlib", "safetensors")


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_building_the_parser_imports_no_torch():
    result = _run_python("import sys; import atrous.cli.main as m; m.build_parser(); "
                         f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_imports_no_torch(command):
    argv = ["--help"] if command is None else [command, "--help"]
    code = ("import sys\nfrom atrous.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit as done:\n"
            "    assert done.code == 0, done.code\nprint(sorted(name for name in %r if name in sys.modules))"
            % (argv, HEAVY))
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert "usage: atrous" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_atrous_is_lazy_but_every_public_name_resolves():
    code = """
import sys
import atrous
assert "torch" not in sys.modules, "import atrous imported torch"
assert {"dilated_conv", "DilatedConv2d", "receptive_field", "ASPP", "export_onnx"} <= set(dir(atrous))
assert set(atrous.__all__) <= set(dir(atrous))
from atrous.ops import dilated_conv
assert atrous.dilated_conv is dilated_conv and "torch" in sys.modules
for name in atrous.__all__:
    assert getattr(atrous, name) is not None, name
try:
    atrous.no_such_name
except AttributeError as error:
    assert "no_such_name" in str(error)
else:
    raise AssertionError("atrous.no_such_name did not raise")
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_subcommand_has_a_description_and_shows_its_defaults(command):
    parser = _subparsers(build_parser())[command]
    assert parser.description and len(parser.description) > 40
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.required:
            continue  # positionals, flags and required options have no default to show
        text = _option_help(parser, action)
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if action.default is not None:
            assert "(default: " in text, f"{command} {action.option_strings[0]} hides its default: {text}"
        elif "default" in text:  # a default chosen at run time is said in the same words
            assert "(default: " in text, f"{command} {action.option_strings[0]}: {text}"


def test_defaults_shown_are_the_parsers_defaults():
    parsers = _subparsers(build_parser())
    rf = {a.dest: a for a in parsers["rf"]._actions}
    assert "(default: 1,2,4,8)" in _option_help(parsers["rf"], rf["rates"])
    assert "(default: 3)" in _option_help(parsers["rf"], rf["kernel"])
    export = {a.dest: a for a in parsers["export"]._actions}
    assert "(default: 18)" in _option_help(parsers["export"], export["opset"])


def test_rf_help_lists_every_registered_model():
    from atrous.models import list_models

    help_text = " ".join(_subparsers(build_parser())["rf"].format_help().split())
    missing = [name for name in list_models() if name not in help_text]
    assert not missing, f"rf --help does not list {missing}"


def test_static_model_names_match_the_registry():
    from atrous.cli._names import MODEL_NAMES
    from atrous.models import list_models

    assert {task: list(names) for task, names in MODEL_NAMES.items()} == {
        task: list_models(task=task) for task in MODEL_NAMES
    }
    assert sorted(name for names in MODEL_NAMES.values() for name in names) == list_models()
