"""A checkpoint loaded back is the model that was saved (with the background prior undone by its
closed form), crafted metadata is named field by field, and the label PNGs hold the argmax of a
forward computed by hand."""

import math

import numpy as np
import pytest
import torch
from tiny_models import SEGMENTATION, calibrated, create_tiny

from atrous.engine.checkpoint import save_checkpoint
from atrous.engine.config import TrainConfig
from atrous.data.palette import MAX_CLASSES
from atrous.engine.predict import load_trained_model, model_from_weights, predict_files

PIL = pytest.importorskip("PIL.Image")
MEAN, STD = [0.4, 0.5, 0.6], [0.3, 0.2, 0.25]
CLASSES = SEGMENTATION["num_classes"]


def saved(folder, *, background_weight=1.0, **meta_changes):
    """A tiny context_net with random BatchNorm (varied predictions) saved as training saves it;
    returns the model (eval mode)."""
    torch.manual_seed(0)
    model = calibrated(create_tiny("context_net"), torch.rand(2, 3, 32, 32))
    kwargs = {"width_multiplier": SEGMENTATION["width_multiplier"]}
    config = TrainConfig(model="context_net", model_kwargs=kwargs, background_weight=background_weight)
    meta = {"model": "context_net", "model_kwargs": kwargs, "num_classes": CLASSES, "class_names": ["a", "b", "c"],
            "data": "digits", "mean": MEAN, "std": STD, "config": config.to_dict(), **meta_changes}
    save_checkpoint(folder, model, meta={k: v for k, v in meta.items() if v is not None})
    return model


def test_a_loaded_checkpoint_is_the_saved_model(tmp_path):
    model = saved(tmp_path / "run")
    loaded, meta = load_trained_model(tmp_path / "run")
    x = torch.randn(2, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert (meta["num_classes"], meta["mean"], meta["model_kwargs"]) == (CLASSES, MEAN, {"width_multiplier": 1 / 16})


def test_a_background_weighted_run_predicts_with_the_weighting_undone(tmp_path):
    model = saved(tmp_path / "run", background_weight=0.25)
    loaded, _ = load_trained_model(tmp_path / "run")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        expected[:, 0] += math.log(4.0)  # log(1 / background_weight) on the background logit
        torch.testing.assert_close(loaded(x), expected)


@pytest.mark.parametrize(("change", "field"), [
    ({"num_classes": 0}, "num_classes"), ({"num_classes": True}, "num_classes"),
    ({"class_names": ["a", "b"]}, "class_names"), ({"class_names": ["a", "b", 3]}, "class_names"),
    ({"mean": [0.5, 0.5]}, "mean"), ({"mean": [0.5, 0.5, math.nan]}, "mean"), ({"std": [0.2, 0.2, 0.0]}, "std"),
    ({"model": 7}, "model"), ({"data": 3}, "data"),
])
def test_crafted_metadata_is_named_by_file_and_field(tmp_path, change, field):
    saved(tmp_path / "run", **change)
    with pytest.raises(ValueError, match=rf"checkpoint file .*checkpoint\.json.*field 'meta\.{field}'"):
        load_trained_model(tmp_path / "run")


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"num_classes": True}, TypeError, "num_classes"), ({"num_classes": 2.0}, TypeError, "num_classes"),
    ({"num_classes": MAX_CLASSES + 1}, ValueError, f"num_classes .*from 1 to {MAX_CLASSES}"),
    ({"num_classes": 0}, ValueError, "num_classes"),
    ({"num_classes": 2, "model_args": {"in_channels": True}}, TypeError, "in_channels must be an int >= 1"),
    ({"num_classes": 2, "model_args": {"in_channels": 0}}, ValueError, "in_channels must be an int >= 1"),
])
def test_model_from_weights_checks_its_ints_by_the_shared_policy(tmp_path, kwargs, error, message):
    """A bool is never a count (TypeError), whatever the checks are written in."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # never read: the arguments are refused first
    with pytest.raises(error, match=message):
        model_from_weights("context_net", weights, **kwargs)


def test_a_checkpoint_without_the_segmentation_fields_says_what_it_is(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "audio", create_tiny("wavenet"), meta={"model": "wavenet", "task": "audio"})
    with pytest.raises(ValueError, match="not a segmentation checkpoint \\(its task is 'audio'.*'meta.num_classes'"):
        load_trained_model(tmp_path / "audio")
    saved(tmp_path / "run", config={"epochs": 0})  # a saved config is validated too
    with pytest.raises(ValueError, match="field 'meta.config'.*epochs must be an int"):
        load_trained_model(tmp_path / "run")


def test_label_pngs_hold_the_argmax_of_the_forward(tmp_path):
    model = saved(tmp_path / "run")
    loaded, meta = load_trained_model(tmp_path / "run")
    pixels = (np.random.default_rng(0).random((18, 26, 3)) * 255).astype(np.uint8)
    PIL.fromarray(pixels).save(tmp_path / "scene.png")
    written = predict_files(loaded, meta, [tmp_path / "scene.png"], tmp_path / "out", progress=False)
    assert written == [tmp_path / "out" / "scene.png", tmp_path / "out" / "scene_overlay.png"]
    image = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)
    normalised = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        expected = model(normalised[None])[0].argmax(0).numpy()
    assert len(np.unique(expected)) > 1  # a constant label map would not show a misplaced pixel
    labels = PIL.open(tmp_path / "out" / "scene.png")
    assert labels.mode == "P"
    np.testing.assert_array_equal(np.asarray(labels), expected)
    assert PIL.open(tmp_path / "out" / "scene_overlay.png").size == (26, 18)


def test_nothing_is_written_unless_every_input_can_be(tmp_path):
    saved(tmp_path / "run")
    loaded, meta = load_trained_model(tmp_path / "run")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        PIL.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "x.png")
    with pytest.raises(ValueError, match="share the stem 'x'"):
        predict_files(loaded, meta, [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predict_files(loaded, meta, [tmp_path / "a" / "x.png", tmp_path / "missing.png"], tmp_path / "out")
    with pytest.raises(ValueError, match="scales"):
        predict_files(loaded, meta, [tmp_path / "a" / "x.png"], tmp_path / "out", scales=(0.0,))
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::atrous.models.RateWarning")  # a tiny input: the rates reach past it
def test_model_from_weights_reads_the_file_once_and_finds_the_class_count_under_old_names(tmp_path, monkeypatch):
    import atrous.models
    import atrous.models.weights

    torch.manual_seed(0)
    name, x = "deeplabv3plus_resnet18", torch.randn(1, 3, 40, 40)
    model = calibrated(create_tiny(name), x)
    # the ASPP branches as atrous named them before DeepLab's head took torchvision's layout
    old = {key.replace("aspp.convs.", "aspp.branches."): value for key, value in model.state_dict().items()}
    assert any(key.startswith("aspp.branches.") for key in old)
    torch.save(old, tmp_path / "old.pth")
    reads, read = [], atrous.models.weights.read_state_dict

    def counted(path):
        reads.append(path)
        return read(path)

    monkeypatch.setattr(atrous.models, "read_state_dict", counted)
    monkeypatch.setattr(atrous.models.weights, "read_state_dict", counted)
    arguments = {k: v for k, v in SEGMENTATION.items() if k != "num_classes"}
    loaded, meta = model_from_weights(name, tmp_path / "old.pth", model_args=arguments)
    assert len(reads) == 1 and meta["num_classes"] == SEGMENTATION["num_classes"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")  # no layout atrous knows
    with pytest.raises(ValueError, match=r"other\.pth.*matches no layout of DeepLabV3Plus"):
        model_from_weights(name, tmp_path / "other.pth", model_args=arguments)
