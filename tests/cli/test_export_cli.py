"""``atrous export`` end to end: a checkpoint in, an ONNX file out that onnxruntime runs at any
size like ``atrous predict``'s model does; bad input -> one line, exit 2."""

import numpy as np
import pytest
import torch

from atrous.cli.main import main
from atrous.engine.checkpoint import save_checkpoint
from atrous.engine.predict import load_trained_model
from atrous.engine.preprocess import normalize

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from atrous.models import create

    torch.manual_seed(0)
    kwargs = {"width_multiplier": 1 / 16}  # the VGG model: the cheapest registered one to export
    model = create("deeplabv1_largefov_vgg16", num_classes=5, **kwargs)
    folder = tmp_path_factory.mktemp("run") / "best"
    meta = {"model": "deeplabv1_largefov_vgg16", "num_classes": 5, "model_kwargs": kwargs, "mean": MEAN, "std": STD}
    save_checkpoint(folder, model, meta=meta)
    return folder


def test_export_then_onnxruntime_equals_the_checkpoint_model(checkpoint, tmp_path, capsys):
    from atrous.export import onnx_session, run_onnx

    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--height", "64", "--width", "64"]
    assert main([*argv, "--check"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "opset 18" in printed
    assert "image (batch, 3, height, width)" in printed and "logits (batch, 5, height, width)" in printed
    assert "max abs diff" in printed and "(ok)" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind
    model, _ = load_trained_model(checkpoint)
    images = torch.rand(2, 3, 45, 77, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(normalize(images, MEAN, STD)).numpy()  # what atrous predict computes
    np.testing.assert_allclose(run_onnx(onnx_session(out), images), expected, rtol=0, atol=1e-4)

    assert main(argv) == 2  # the file exists
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--no-normalize"]) == 0
    normalised = normalize(images, MEAN, STD)
    np.testing.assert_allclose(run_onnx(onnx_session(out), normalised), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "tflite"], "--format must be one of ('onnx',), got 'tflite'"),
        (["--height", "4"], "--height must be an int from 8 to 4,096, got 4"),
        (["--opset", "11"], "opset must be an int from 18"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(checkpoint, tmp_path, extra, message, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--checkpoint", "/no/such/run", "--out", "m.onnx"], "does not exist"),
        (["export", "--checkpoint", "/no/such/run"], "--out"),
        (["export", "--checkpoint", "x", "--out", "/no/such/folder/m.onnx"], "does not exist"),
    ],
)
def test_bad_paths_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_onnx_package_is_one_line_and_exit_2(checkpoint, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'atrous[onnx]'" in capsys.readouterr().err
