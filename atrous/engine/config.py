"""Training configuration: one dataclass, validated up front so mistakes fail before work starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1.5e-3, "sgd": 0.01}
_OLD_ADAMW_LR = 3e-3  # the default of runs saved before background_weight existed
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
        if not self.background_weight > 0:
            raise ValueError(f"background_weight must be > 0, got {self.background_weight!r}")
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
        values = {"precision": "fp32", **values}  # runs saved before the option trained in float32
        if "background_weight" not in values and values.get("optimizer", "adamw") == "adamw" and values.get("lr") is None:
            values["lr"] = _OLD_ADAMW_LR  # so such a run resumes with the rate it started with
        return cls(**{k: v for k, v in values.items() if k in known})
