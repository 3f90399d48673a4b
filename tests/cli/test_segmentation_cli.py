"""End to end through the command line: train -> eval -> predict, and bad input -> exit 2."""

import json

import numpy as np
import pytest
from PIL import Image

from atrous.cli.main import main

TINY = ["--model-arg", "width_multiplier=0.25", "--train-images", "8", "--val-images", "4", "--batch-size", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--device", "cpu", *TINY]) == 0
    return out


def test_eval_json_matches_metrics_file(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"miou", "pixel_acc", "iou", "confusion"}
    assert len(result["iou"]) == 11
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The best checkpoint scored on the same validation scenes gives the same number.
    assert result["miou"] == pytest.approx(metrics["best"]["val_miou"], abs=1e-9)
    confusion = np.array(result["confusion"])
    assert result["pixel_acc"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_eval_table_and_flip(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir), "--flip", "--scales", "0.75,1"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "confusion matrix" in out


def test_predict_writes_index_png_and_overlay(run_dir, tmp_path, capsys):
    image = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.jpg")
    Image.fromarray(image[..., 0]).save(tmp_path / "gray.png")
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(run_dir), str(tmp_path / "scene.jpg"), str(tmp_path / "gray.png"), "--out", str(out)]
    assert main(args) == 0
    for stem in ("scene", "gray"):
        with Image.open(out / f"{stem}.png") as mask:
            assert mask.mode == "P" and mask.size == (52, 40)
            assert np.array(mask).max() < 11
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.size == (52, 40)
    capsys.readouterr()
    assert main(args) == 2  # outputs exist: refuse without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "nope"], "unknown segmentation model 'nope'"),
        (["train", "--data", "/no/such/folder"], "no such folder"),
        (["train", "--epochs", "x"], "invalid int value"),
        (["eval", "--checkpoint", "/no/such/run"], "does not exist"),
        (["predict", "--checkpoint", "/no/such/run", "a.png", "--out", "o"], "does not exist"),
        (["rf", "--rates", "1,0"], "--rates"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_existing_run_folder_needs_resume_or_overwrite(run_dir, capsys):
    assert main(["train", "--out", str(run_dir), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err


def test_labels_beyond_the_checkpoints_classes(run_dir, tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / split / "images" / "a.png")
        Image.fromarray(np.full((16, 16), 20, np.uint8)).save(root / split / "masks" / "a.png")
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and len(err.strip().splitlines()) == 1


def test_errors_from_dataloader_workers_become_one_line():
    from atrous.cli.main import one_line

    # What PyTorch re-raises from a worker: the worker's whole traceback inside the message.
    error = ValueError(
        "Caught ValueError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n    raise ValueError(...)\nValueError: cannot read image file a.png: broken\n'
    )
    assert one_line(error) == "atrous: error: cannot read image file a.png: broken"
