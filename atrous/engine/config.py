"""Training configuration: one dataclass, validated up front so mistakes fail before work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1.5e-3, "sgd": 0.01}
# 1: AdamW 3e-3 by default, context_net decoder C/4 and C/2, float32 if precision is absent;
# 2: 20 epochs and background weight 1 by default (the digits recipe then lived in the CLI)
CONFIG_VERSION = 3
CONTEXT_FAMILY = ("context_net", "plain_net", "gridding_net", "hdc_net")
PRECISIONS = ("auto", "fp32", "bf16")
_OPTIONAL = ("crop_size", "num_classes", "train_images", "val_images")
_INT_RANGES = {  # bounds that no real run reaches, so a crafted config cannot ask for absurd work
    "epochs": (1, 100_000), "batch_size": (1, 65_536), "crop_size": (8, 65_536), "num_classes": (1, 255),
    "train_images": (1, 10**8), "val_images": (1, 10**8), "workers": (0, 256), "seed": (0, 2**32 - 1),
    "config_version": (1, CONFIG_VERSION),
}
_FLOAT_RANGES = {  # name: (low, high, low excluded)
    "lr": (0.0, 1e3, True), "weight_decay": (0.0, 1e3, False), "background_weight": (0.0, 1e3, True),
    "momentum": (0.0, 1.0, False), "poly_power": (0.0, 100.0, False),
}
# What `atrous train --data FOLDER` changes from the digits defaults of TrainConfig()
FOLDER_PRESET = {"epochs": 20, "background_weight": 1.0, "crop_size": 320, "scale_range": (0.5, 2.0), "flip": True,
                 "workers": 2}


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved with every checkpoint.

    Attributes:
        data: ``"digits"`` (built in) or a folder in the VOC or ``{train,val}/{images,masks}`` layout.
        model: a registered segmentation model name.
        epochs: passes over the training set.
        batch_size: images per optimizer step, summed over all processes.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum, the DeepLab recipe).
        background_weight: loss weight of class 0 (background) relative to 1 for every other
            class; below 1 when background dominates the pixels, as on ``digits``.
        lr: peak learning rate; ``None`` picks the optimizer's default. Decays with the
            DeepLab "poly" schedule ``lr * (1 - step / total) ** poly_power``.
        crop_size: random crop (padded with the ignore label) for training; ``None`` keeps size.
        scale_range: random rescale range before cropping.
        flip: random horizontal flips (off for digits: a flipped digit is another shape).
        num_classes: override the class count inferred from the data.
        train_images, val_images: number of generated scenes (``digits`` only).
        workers: processes drawing training batches; 0 lets :func:`atrous.data.loader.batch_stream`
            choose (between steps when torch's threads fill every core, else one worker).
        seed: seeds data order, augmentation and initialisation.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"fp32"``, ``"bf16"`` (forward under ``torch.autocast`` in bfloat16; weights,
            optimizer state and loss stay float32) or ``"auto"``: bf16 where the hardware runs it
            natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs that support it), else fp32.
        model_kwargs: extra keyword arguments for the model builder.
    """

    data: str = "digits"
    model: str = "context_net"
    epochs: int = 6
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    background_weight: float = 0.3
    momentum: float = 0.9
    poly_power: float = 0.9
    crop_size: int | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    num_classes: int | None = None
    train_images: int | None = None
    val_images: int | None = None
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    config_version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.scale_range, (tuple, list)) or len(self.scale_range) != 2:
            raise ValueError(f"scale_range must be a pair (low, high), got {self.scale_range!r}")
        self.scale_range = tuple(self.scale_range)
        for name in ("data", "model", "device"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")
        for name, (low, high, open_low) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if value is None and name == "lr":
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value > high or value < low or (open_low and value == low):
                bound = f"> {low}" if open_low else f">= {low}"
                raise ValueError(f"{name} must be a finite number {bound} and <= {high}, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        low, high = self.scale_range
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
                or not 0 < low <= high <= 10:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high <= 10, got {self.scale_range!r}")
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be True or False, got {self.flip!r}")
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise TypeError(f"model_kwargs must be a dict with string keys, got {self.model_kwargs!r}")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """A saved config, with the defaults of the version it was saved under.

        Raises:
            ValueError: naming ``source`` and the field that is missing, of the wrong type or out of range.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source}: the config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        # A run saved before the field is version 1, unless it has background_weight (which came with version 2)
        version = values.get("config_version", 2 if "background_weight" in values else 1)
        if version == 1:
            values = _version_1_defaults(values)
        if version in (1, 2):  # so such a run resumes, evaluates and predicts as it was trained
            values = {"epochs": 20, "background_weight": 1.0, **values, "config_version": CONFIG_VERSION}
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


def train_config(data: str = "digits", **overrides: Any) -> TrainConfig:
    """The recipe of ``atrous train --data DATA``: ``TrainConfig()`` for digits, :data:`FOLDER_PRESET` for a folder.

    Args:
        data: ``"digits"`` or a folder.
        **overrides: any :class:`TrainConfig` field, taking precedence over the preset.
    """
    preset = {} if data == "digits" else FOLDER_PRESET
    return TrainConfig(data=data, **{**preset, **overrides})


def _version_1_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The defaults a version-1 run was trained with, made explicit, and the version raised."""
    from atrous.models.segmentation._common import scaled

    values = {"precision": "fp32", **values}  # before precision: float32
    if values.get("optimizer", "adamw") == "adamw" and values.get("lr") is None:
        values["lr"] = 3e-3
    kwargs = dict(values.get("model_kwargs") or {})
    if values.get("model", "context_net") in CONTEXT_FAMILY and kwargs.get("decoder", True):
        channels = scaled(96, kwargs.get("width_multiplier", 1.0))
        kwargs.setdefault("skip_channels", max(1, channels // 4))
        kwargs.setdefault("fuse_channels", max(1, channels // 2))
    values["model_kwargs"] = kwargs
    return values
