"""Training configuration: one dataclass, validated up front so mistakes fail before work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1.5e-3, "sgd": 0.01}
CONFIG_VERSION = 2  # 1: AdamW 3e-3 by default, context_net decoder C/4 and C/2, float32 if precision is absent
CONTEXT_FAMILY = ("context_net", "plain_net", "gridding_net", "hdc_net")
PRECISIONS = ("auto", "fp32", "bf16")


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
        workers: DataLoader worker processes.
        seed: seeds data order, augmentation and initialisation.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"fp32"``, ``"bf16"`` (forward under ``torch.autocast`` in bfloat16; weights,
            optimizer state and loss stay float32) or ``"auto"``: bf16 where the hardware runs it
            natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs that support it), else fp32.
        model_kwargs: extra keyword arguments for the model builder.
    """

    data: str = "digits"
    model: str = "context_net"
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    background_weight: float = 1.0
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
        self.scale_range = tuple(self.scale_range)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not (math.isfinite(self.background_weight) and self.background_weight > 0):
            raise ValueError(f"background_weight must be a finite number > 0, got {self.background_weight!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range!r}")
        if self.crop_size is not None and self.crop_size < 8:
            raise ValueError(f"crop_size must be >= 8 pixels, got {self.crop_size!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        for name in ("num_classes", "train_images", "val_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # A run saved before the field is version 1, unless it has background_weight (which came with version 2)
        values = {"config_version": 2 if "background_weight" in values else 1, **values}
        if values["config_version"] == 1:  # so such a run resumes, evaluates and predicts as it was trained
            values = _version_1_defaults(values)
        return cls(**{k: v for k, v in values.items() if k in known})


def _version_1_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The defaults a version-1 run was trained with, made explicit, and the version raised."""
    from atrous.models.segmentation._common import scaled

    values = {"precision": "fp32", **values, "config_version": CONFIG_VERSION}  # before precision: float32
    if values.get("optimizer", "adamw") == "adamw" and values.get("lr") is None:
        values["lr"] = 3e-3
    kwargs = dict(values.get("model_kwargs") or {})
    if values.get("model", "context_net") in CONTEXT_FAMILY and kwargs.get("decoder", True):
        channels = scaled(96, kwargs.get("width_multiplier", 1.0))
        kwargs.setdefault("skip_channels", max(1, channels // 4))
        kwargs.setdefault("fuse_channels", max(1, channels // 2))
    values["model_kwargs"] = kwargs
    return values
