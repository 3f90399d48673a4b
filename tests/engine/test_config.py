"""TrainConfig: every bound enforced at both ends, saved configs of each version read with the
defaults they were trained under, and the recipes of ``atrous train``."""

import math
from dataclasses import fields

import pytest

from atrous.engine.config import _FLOAT_RANGES, _INT_RANGES, CONFIG_VERSION, FOLDER_PRESET, TrainConfig, train_config



@pytest.mark.parametrize("name", sorted(_INT_RANGES))
def test_int_fields_take_their_bounds_and_nothing_beyond(name):
    low, high = _INT_RANGES[name]
    assert getattr(TrainConfig(**{name: low}), name) == low
    assert getattr(TrainConfig(**{name: high}), name) == high
    for bad in (low - 1, high + 1):
        with pytest.raises(ValueError, match=f"{name} must be an int"):
            TrainConfig(**{name: bad})
    for bad in (True, float(low), str(low)):
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            TrainConfig(**{name: bad})


@pytest.mark.parametrize("name", sorted(_FLOAT_RANGES))
def test_float_fields_take_their_bounds_and_nothing_beyond(name):
    low, high, low_open = _FLOAT_RANGES[name]
    assert getattr(TrainConfig(**{name: high}), name) == high
    assert getattr(TrainConfig(**{name: math.nextafter(low, math.inf)}), name) > low
    rejected = [math.nextafter(low, -math.inf), math.nextafter(high, math.inf), math.nan, math.inf, -math.inf]
    if low_open:
        rejected.append(low)
    else:
        assert getattr(TrainConfig(**{name: low}), name) == low
    for bad in rejected:
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            TrainConfig(**{name: bad})
    for bad in (True, "1"):
        with pytest.raises(TypeError, match=f"{name} must be a finite number"):
            TrainConfig(**{name: bad})


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [("epochs", 0, "epochs must be an int from 1 to 100,000, got 0"), ("optimizer", "adam", "optimizer must be one of"),
     ("scale_range", (2.0, 1.0), "scale_range"), ("scale_range", (0.0, 1.0), "scale_range"),
     ("scale_range", (1.0, 11.0), "scale_range"), ("scale_range", (1.0,), "scale_range must be a pair"),
     ("lr", -1.0, "lr must be a finite number > 0"), ("lr", float("inf"), "lr must be a finite"),
     ("seed", -1, "seed must be an int from 0 to"), ("num_classes", 300, "num_classes must be an int from 1 to 255"),
     ("precision", "fp16", "precision must be one of"),
     ("background_weight", 0.0, "background_weight must be a finite number > 0"),
     ("background_weight", float("inf"), "background_weight must be a finite number > 0")],
)
def test_config_errors_name_the_field(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("data", 3), ("model", None), ("device", 0), ("flip", 1),
                                              ("freeze_bn", "yes"), ("model_kwargs", []), ("model_kwargs", {1: 2}),
                                              ("scale_range", "1,2"), ("scale_range", (1.0, "2"))])
def test_wrong_types_name_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        TrainConfig(**{field: value})


def test_optional_fields_take_none_and_peak_lr_falls_back_to_the_optimizers_default():
    config = TrainConfig(crop_size=None, num_classes=None, train_images=None, val_images=None, lr=None)
    assert config.peak_lr == 1.5e-3
    assert TrainConfig(optimizer="sgd").peak_lr == 0.01
    assert TrainConfig(optimizer="sgd", lr=0.5).peak_lr == 0.5
    assert TrainConfig(scale_range=[0.5, 2]).scale_range == (0.5, 2)  # a JSON list comes back a tuple


def test_a_saved_config_reads_back_equal_and_unknown_keys_are_ignored():
    config = TrainConfig(data="/data/voc", model="deeplabv3_resnet50", epochs=30, optimizer="sgd", lr=0.007,
                         crop_size=321, scale_range=(0.5, 1.5), flip=True, precision="bf16",
                         model_kwargs={"output_stride": 8})
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({**config.to_dict(), "from_the_future": 1}) == config


def test_bad_saved_configs_name_their_source():
    with pytest.raises(ValueError, match="run/config.json: the config must be a JSON object, got list"):
        TrainConfig.from_dict([], source="run/config.json")
    with pytest.raises(ValueError, match="run/config.json: epochs must be an int"):
        TrainConfig.from_dict({"config_version": CONFIG_VERSION, "epochs": -1}, source="run/config.json")
    with pytest.raises(ValueError, match="config: config_version must be an int"):
        TrainConfig.from_dict({"config_version": CONFIG_VERSION + 1})


def test_version_1_configs_get_the_defaults_they_were_trained_with():
    # Before config_version: AdamW at 3e-3, float32, 20 epochs, background not weighted, and
    # context_net's decoder C/4 and C/2 wide (C = 96 x width_multiplier).
    old = TrainConfig.from_dict({"model": "context_net", "model_kwargs": {"width_multiplier": 0.25}})
    assert (old.peak_lr, old.precision, old.epochs, old.background_weight) == (3e-3, "fp32", 20, 1.0)
    assert old.model_kwargs == {"width_multiplier": 0.25, "skip_channels": 6, "fuse_channels": 12}
    assert old.config_version == CONFIG_VERSION
    assert TrainConfig.from_dict({"model": "hdc_net"}).model_kwargs == {"skip_channels": 24, "fuse_channels": 48}
    # what the run recorded stands
    kept = TrainConfig.from_dict({"lr": 0.01, "precision": "bf16", "epochs": 3,
                                  "model_kwargs": {"skip_channels": 5}})
    assert (kept.peak_lr, kept.precision, kept.epochs) == (0.01, "bf16", 3)
    assert kept.model_kwargs == {"skip_channels": 5, "fuse_channels": 48}
    assert TrainConfig.from_dict({"optimizer": "sgd"}).peak_lr == 0.01  # 3e-3 was AdamW's default only
    assert TrainConfig.from_dict({"model_kwargs": {"decoder": False}}).model_kwargs == {"decoder": False}
    assert TrainConfig.from_dict({"model": "deeplabv3_resnet18"}).model_kwargs == {}


def test_runs_saved_before_the_precision_option_resume_in_float32():
    values = TrainConfig().to_dict()
    del values["precision"], values["background_weight"], values["config_version"]  # as such a run saved it
    assert TrainConfig.from_dict(values).precision == "fp32"
    assert TrainConfig.from_dict(TrainConfig(precision="bf16").to_dict()).precision == "bf16"


def test_runs_saved_before_the_lr_default_changed_resume_with_their_rate():
    values = TrainConfig().to_dict()
    del values["background_weight"], values["config_version"]  # a run saved when AdamW defaulted to 3e-3
    old = TrainConfig.from_dict(values)
    assert old.peak_lr == 3e-3 and old.background_weight == 1.0
    assert TrainConfig.from_dict(TrainConfig().to_dict()).peak_lr == TrainConfig().peak_lr != 3e-3
    assert TrainConfig.from_dict(TrainConfig(lr=0.02).to_dict()).peak_lr == 0.02


@pytest.mark.parametrize("marked", [False, True])
def test_version_2_configs_get_20_epochs_and_unweighted_background(marked):
    # version 2 is recognised by its background_weight field, or says so
    values = {"background_weight": 1.0, **({"config_version": 2} if marked else {})}
    config = TrainConfig.from_dict(values)
    assert (config.epochs, config.background_weight, config.config_version) == (20, 1.0, CONFIG_VERSION)
    assert config.precision == TrainConfig().precision and config.peak_lr == TrainConfig().peak_lr  # as version 3
    assert TrainConfig.from_dict({"config_version": 2}).background_weight == 1.0
    given = TrainConfig.from_dict({**values, "background_weight": 0.5, "epochs": 4})
    assert (given.epochs, given.background_weight) == (4, 0.5)


def test_version_3_configs_take_todays_defaults():
    config = TrainConfig.from_dict({"config_version": CONFIG_VERSION})
    assert config == TrainConfig()
    assert config.background_weight < 1  # digits: background dominates the pixels


def test_train_config_is_the_default_for_digits_and_the_folder_preset_otherwise():
    assert train_config() == TrainConfig()
    folder = train_config("/data/voc")
    assert folder.data == "/data/voc"
    for field in fields(TrainConfig):
        expected = FOLDER_PRESET.get(field.name, getattr(TrainConfig(), field.name))
        if field.name != "data":
            assert getattr(folder, field.name) == expected, field.name
    assert folder.background_weight == 1.0 and folder.flip  # real photos: no class reweighting, flips are fine
    overridden = train_config("/data/voc", epochs=3, flip=False, seed=7)
    assert (overridden.epochs, overridden.flip, overridden.seed, overridden.crop_size) == (3, False, 7, 320)
    with pytest.raises(ValueError, match="epochs must be an int"):
        train_config("/data/voc", epochs=0)
