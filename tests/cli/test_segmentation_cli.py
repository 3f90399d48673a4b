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


def test_eval_table_labels_the_confusion_matrix(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "rows: true class, columns: predicted class" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix")) + 1
    header, *rows = lines[start : start + 1 + len(result["class_names"])]
    assert header.split()[:3] == ["true", "\\", "predicted"]
    assert header.split()[3:] == result["class_names"]  # columns: predicted classes, in order
    assert [row.split()[0] for row in rows] == result["class_names"]  # rows: true classes
    assert [[int(v) for v in row.split()[1:]] for row in rows] == result["confusion"]


def test_eval_flip_and_scales_change_what_the_model_sees(run_dir, capsys, monkeypatch):
    import torch

    import atrous.engine.predict as predict

    seen = []
    load = predict.load_trained_model

    def spying_load(*args, **kwargs):  # record every input the model is run on
        model, meta = load(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
        return model, meta

    monkeypatch.setattr(predict, "load_trained_model", spying_load)
    assert main(["eval", "--checkpoint", str(run_dir), "--json"]) == 0
    plain, plain_inputs = json.loads(capsys.readouterr().out), list(seen)
    seen.clear()
    assert main(["eval", "--checkpoint", str(run_dir), "--json", "--flip", "--scales", "0.75,1"]) == 0
    augmented = json.loads(capsys.readouterr().out)
    assert augmented["images"] == plain["images"]
    assert len(plain_inputs) >= 1 and len(seen) == 4 * len(plain_inputs)  # 2 scales x (image, flipped image)
    height, width = plain_inputs[0].shape[-2:]
    small = (max(8, round(height * 0.75)), max(8, round(width * 0.75)))
    for batch, image in enumerate(plain_inputs):
        at_075, at_075_flipped, at_1, at_1_flipped = seen[4 * batch : 4 * batch + 4]
        assert tuple(at_075.shape[-2:]) == small and tuple(at_1.shape[-2:]) == (height, width)
        assert torch.equal(at_075_flipped, at_075.flip(-1)) and torch.equal(at_1_flipped, image.flip(-1))
        assert torch.equal(at_1, image)


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


def test_predict_tiles_a_large_image_into_the_whole_images_labels(run_dir, tmp_path, monkeypatch):
    import torch
    from tiny_models import calibrated

    import atrous.engine.predict as predict

    sizes = []
    load = predict.load_trained_model

    def spying_load(*args, **kwargs):  # record the size of every input the model is run on (not the analysis')
        model, meta = load(*args, **kwargs)
        # one epoch on 8 scenes predicts background everywhere: random BatchNorm and a louder classifier vary it
        calibrated(model, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            getattr(model, "model", model).classifier.weight.mul_(50)  # inside the background prior
        model.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[-2:]))
                                        if inputs[0].device.type != "meta" else None)
        return model, meta

    monkeypatch.setattr(predict, "load_trained_model", spying_load)
    from atrous.data.digits import DigitsScenes

    scenes = DigitsScenes("val", size=152, num_images=16, seed=3)  # 4 x 4 scenes: 608 x 608
    rows = [np.concatenate([scenes[4 * r + c][0].permute(1, 2, 0).numpy() for c in range(4)], 1) for r in range(4)]
    Image.fromarray((np.concatenate(rows, 0) * 255).round().astype(np.uint8)).save(tmp_path / "big.png")
    masks = {}
    for tile in ("0", "600"):  # context_net reaches 289 px: a 600-pixel tile keeps an 8-pixel core, exactly
        out = tmp_path / f"tile{tile}"
        assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "big.png"), "--out", str(out),
                     "--tile", tile]) == 0
        with Image.open(out / "big.png") as mask:
            masks[tile] = np.array(mask)
    assert sizes == [(608, 608)] + [(600, 600)] * 4  # whole, then 2 x 2 tiles
    np.testing.assert_array_equal(masks["600"], masks["0"])
    assert np.bincount(masks["0"].ravel()).max() < 0.9 * masks["0"].size  # no class covers everything


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
