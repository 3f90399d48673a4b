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


@pytest.mark.parametrize("rates, verdict, exit_code", [("1,2,5", "valid:", 0), ("2,4,8", "invalid:", 1)])
def test_check_hdc_exits_1_when_the_rates_fail(capsys, rates, verdict, exit_code):
    code, out, _ = run(capsys, "--check-hdc", rates)
    assert out.startswith(verdict) and code == exit_code
    code, out, _ = run(capsys, "--check-hdc", rates, "--json")
    assert json.loads(out)["valid"] == (exit_code == 0) and code == exit_code


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


def test_model_table_names_every_op_whole(capsys):
    code, out, _ = run(capsys, "--model", "resnet18", "--input", "3,64,64")
    assert code == 0
    ops = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
           if line.startswith("| ") and not line.startswith("| -")}
    assert ops["conv1"] == "conv" and ops["maxpool"] == "max_pool"  # not a column cut to "max_poo"


def test_erf_plot_says_the_weights_are_random(capsys, tmp_path, plot_titles):
    titles = plot_titles
    path = tmp_path / "erf.png"
    code, out, _ = run(capsys, "--model", "tcn", "--input", "2,256", "--plot", str(path))
    assert code == 0 and path.exists()
    assert len(titles) == 1 and "tcn" in titles[0] and "random init" in titles[0]


def test_a_plot_on_a_full_disk_leaves_no_partial_file(capsys, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, fname, *args, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    path = tmp_path / "coverage.png"
    code, _, err = run(capsys, "--rates", "1,2,5", "--plot", str(path))
    assert code == 1 and err.count("\n") == 1 and str(path) in err and "No space" in err, err
    assert list(tmp_path.iterdir()) == []
