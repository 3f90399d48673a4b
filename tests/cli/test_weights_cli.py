"""``--model NAME --weights PATH`` and tiles through the command line: the masks and scores equal the
library's on a saved ``state_dict`` (.pth and .safetensors), normalised with ImageNet's statistics
by default; bad input exits 2 with one line naming the option or the file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import calibrated, create_tiny

from atrous.cli.main import main
from atrous.engine.evaluate import evaluate, predict_probabilities
from atrous.engine.predict import read_rgb

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
MODEL = ["--model", "plain_net", "--model-arg", "width_multiplier=0.0625"]  # tiny_models' width


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny plain_net (3 classes, random BatchNorm) saved as .pth and .safetensors, a small image, a
    large one (264 x 344: 6 tiles of 256 with plain_net's margin) and a two-image dataset folder."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = calibrated(create_tiny("plain_net"), torch.rand(2, 3, 64, 64))
    torch.save(model.state_dict(), root / "model.pth")
    save_file(model.state_dict(), root / "model.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8)).save(root / "small.png")
    Image.fromarray((rng.random((264, 344, 3)) * 255).astype(np.uint8)).save(root / "large.png")
    for split in ("val",):
        (root / "data" / split / "images").mkdir(parents=True)
        (root / "data" / split / "masks").mkdir(parents=True)
        for index in range(2):
            Image.fromarray((rng.random((48, 56, 3)) * 255).astype(np.uint8)).save(
                root / "data" / split / "images" / f"s{index}.png")
            Image.fromarray(rng.integers(0, 3, (48, 56)).astype(np.uint8)).save(
                root / "data" / split / "masks" / f"s{index}.png")
    Image.fromarray(np.full((48, 56), 2, np.uint8)).save(root / "data" / "val" / "masks" / "s1.png")
    return root, model.eval()


def library_mask(model, path):
    image = read_rgb(path)[None]
    return predict_probabilities(model, image, mean=IMAGENET[0], std=IMAGENET[1]).argmax(1)[0].numpy()


@pytest.mark.parametrize("weights", ["model.pth", "model.safetensors"])
def test_predict_with_weights_writes_the_librarys_masks(files, weights, tmp_path, capsys):
    root, model = files
    extra = ["--num-classes", "3"] if weights.endswith(".pth") else []  # else read from the file's classifier
    args = ["predict", *MODEL, "--weights", str(root / weights), *extra, str(root / "small.png"),
            str(root / "large.png"), "--tile", "256", "--out", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atrous: weights: loaded ") and weights in err[0]
    for stem in ("small", "large"):  # large.png is tiled: 264 x 344 > --tile 256
        with Image.open(tmp_path / f"{stem}.png") as mask:
            np.testing.assert_array_equal(np.array(mask), library_mask(model, root / f"{stem}.png"))


def test_eval_with_weights_scores_as_the_library(files, capsys):
    root, model = files
    from atrous.data import build_dataset

    assert main(["eval", *MODEL, "--weights", str(root / "model.pth"), "--data", str(root / "data"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    dataset = build_dataset(str(root / "data"), "val", num_classes=3)
    expected = evaluate(model, dataset, mean=IMAGENET[0], std=IMAGENET[1])
    assert result["confusion"] == expected["confusion"] and sum(map(sum, result["confusion"])) == 2 * 48 * 56


@pytest.mark.parametrize(("argv", "message"), [
    (["--weights", "{root}/nowhere.pth"], "nowhere.pth"),
    (["--weights", "{root}/small.png"], "small.png"),
    (["--checkpoint", "{root}", "--weights", "{root}/model.pth"], "not both"),
    (["--checkpoint", "{root}", "--num-classes", "3"], "--num-classes"),
    (["--num-classes", "0", "--weights", "{root}/model.pth"], "--num-classes"),
    (["--weights", "{root}/model.pth", "--mean", "0.5,0.5"], "--mean"),
    (["--weights", "{root}/model.pth", "--std", "0,1,1"], "--std"),
    (["--weights", "{root}/model.pth", "--tile", "10"], "--tile"),
    (["--weights", "{root}/model.pth", "--tile", "256", "--tile-overlap", "128"], "--tile-overlap"),
    (["--weights", "{root}/model.pth", "--tile-overlap", "-1"], "--tile-overlap"),
])
def test_bad_input_is_one_line_and_exit_2(files, argv, message, tmp_path, capsys):
    root, _ = files
    argv = [arg.format(root=root) for arg in argv]
    model = [] if "--checkpoint" in argv and "--weights" not in argv else MODEL
    assert main(["predict", *model, *argv, str(root / "small.png"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["predict", "--model", "plain_net", "{root}/small.png", "--out", "o"], "--weights"),
    (["predict", "--weights", "{root}/model.pth", "{root}/small.png", "--out", "o"], "--model"),
    (["predict", "{root}/small.png", "--out", "o"], "--checkpoint"),
    (["predict", "--model", "deeplabv3_resnet18", "--weights", "{root}/model.pth", "--num-classes", "3",
      "{root}/small.png", "--out", "o"], "model.pth"),
    (["predict", "--model", "plain_net", "--weights", "{root}/model.pth", "{root}/small.png", "--out", "o"],
     "does not hold all of plain_net's tensors"),  # width 1 against a tiny file: the classifier would be random
    (["eval", *MODEL, "--weights", "{root}/model.pth"], "--data"),
    (["export", "--model", "tcn", "--weights", "{root}/model.pth", "--out", "{root}/m.onnx"], "segmentation"),
])
def test_model_source_errors(files, argv, message, capsys):
    root, _ = files
    assert main([arg.format(root=root) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
