"""``atrous rf``: the table of the tutorial, JSON, HDC verdicts, plots and registered models."""

import json

import pytest
from PIL import Image

from atrous.cli.main import main
from atrous.ops.padding import kernel_extent


def run(capsys, *argv):
    code = main(["rf", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rates_table(capsys):
    code, out, _ = run(capsys, "--rates", "1,2,4,8", "--kernel", "3", "--channels", "8")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[4].strip() for line in lines] == ["3", "7", "15", "31"]
    per_layer = 8 * 8 * 9 + 8
    assert [line.split("|")[5].strip() for line in lines] == [f"{per_layer:,}"] * 4  # params do not grow with rate
    assert "total" in out


def test_json_carries_field_and_cost(capsys):
    code, out, _ = run(capsys, "--rates", "1,2,4,8,16", "--dims", "1", "--channels", "2", "--input", "2,100", "--json")
    data = json.loads(out)
    assert code == 0 and data["size"] == [63] and data["stride"] == [1] and data["padding"] == [31]
    assert [layer["size"][0] for layer in data["layers"]] == [1 + sum(kernel_extent(3, r) - 1 for r in (1, 2, 4, 8, 16)[: i + 1]) for i in range(5)]
    assert data["macs"] == 5 * 100 * 2 * 2 * 3 and data["params"] == 5 * (2 * 2 * 3 + 2)


@pytest.mark.parametrize("rates, verdict", [("1,2,5", "valid:"), ("2,4,8", "invalid:")])
def test_check_hdc(capsys, rates, verdict):
    code, out, _ = run(capsys, "--check-hdc", rates)
    assert code == 0 and out.startswith(verdict)


def test_plot(capsys, tmp_path):
    path = tmp_path / "coverage.png"
    code, out, _ = run(capsys, "--rates", "1,2,9", "--plot", str(path))
    assert code == 0 and path.exists()
    with Image.open(path) as image:
        image.load()


@pytest.mark.parametrize("argv", [["--rates", "1,0"], ["--kernel", "0"], ["--model", "no_such_model"],
                                  ["--dims", "1", "--input", "3,32,32"]])
def test_errors_are_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_registered_sequence_model(capsys):
    from atrous.models import list_models

    names = list_models(task="sequence")
    if not names:
        pytest.skip("no sequence model registered")
    code, out, _ = run(capsys, "--model", names[0], "--json")
    data = json.loads(out)
    assert code == 0 and len(data["size"]) == 1 and data["size"][0] > 1 and data["params"] > 0 and data["macs"] > 0
