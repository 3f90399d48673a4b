"""Audio from a WaveNet checkpoint of ``atrous train-seq --task audio``.

Each step feeds one mu-law sample per stream and keeps the layers' past in ring buffers, so a
second of 8 kHz audio costs 8000 single-sample steps, not 8000 forwards over the receptive
field (van den Oord et al. 2016; Paine et al. 2016, "Fast WaveNet generation algorithm").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from atrous._checks import is_int

MAX_SAMPLE_RATE = 768_000
DEFAULT_SAMPLE_RATE = 8000  # the rate of the speech the audio task trains on


def audio_checkpoint_meta(path: str | Path) -> tuple[Path, dict]:
    """The checkpoint folder of ``path`` (a run folder or a save) and its metadata.

    Raises:
        ValueError: the checkpoint is not a WaveNet trained on audio, or a field is malformed
            (the message names the file and the field).
    """
    from atrous.engine.checkpoint import META_FILE, read_checkpoint_meta
    from atrous.engine.predict import resolve_checkpoint

    folder = resolve_checkpoint(path)
    file = str(folder / META_FILE)
    meta = read_checkpoint_meta(folder)["meta"]
    task = meta.get("task")
    if task != "audio":
        kind = ("a segmentation checkpoint of `atrous train`" if "num_classes" in meta and task is None
                else f"field 'meta.task' is {task!r}")
        raise ValueError(f"checkpoint {file!r} is not an audio WaveNet checkpoint ({kind}); generation "
                         "needs one trained with `atrous train-seq --task audio`")
    if meta.get("model") != "wavenet":
        raise ValueError(f"checkpoint {file!r}: field 'meta.model' must be 'wavenet', got {meta.get('model')!r}")
    kwargs = meta.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"checkpoint {file!r}: field 'meta.model_kwargs' must be a JSON object of builder "
                         f"arguments, got {kwargs!r}")
    rate = meta.get("sample_rate")
    if rate is not None and (not is_int(rate) or not 1 <= rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"checkpoint {file!r}: field 'meta.sample_rate' must be an int from 1 to "
                         f"{MAX_SAMPLE_RATE:,} (Hz), got {rate!r}")
    return folder, meta


def load_audio_model(folder: Path, meta: dict) -> nn.Module:
    """The WaveNet saved in ``folder``, its size checked before anything is allocated."""
    from atrous.engine.checkpoint import load_checkpoint
    from atrous.engine.trainer import check_model_size
    from atrous.models import create

    kwargs = meta.get("model_kwargs", {})
    try:
        check_model_size("wavenet", **kwargs)  # a crafted file allocates nothing
    except ValueError as error:
        raise ValueError(f"checkpoint {str(folder / 'checkpoint.json')!r}: field 'meta.model_kwargs': {error}") from None
    model = create("wavenet", **kwargs)
    load_checkpoint(folder, model)
    return model


def generate_audio(
    model: nn.Module,
    samples: int,
    *,
    count: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """``count`` clips of ``samples`` samples in [-1, 1], drawn as a batch of streams.

    Returns:
        ``(count, samples)`` float tensor (mu-law decoded).
    """
    from atrous.data.sequence import mu_law_decode
    from atrous.streaming.sampling import sample_autoregressive

    generator = torch.Generator().manual_seed(seed)
    ids = sample_autoregressive(model, samples, batch_size=count, temperature=temperature, generator=generator,
                                progress=progress)
    return mu_law_decode(ids, model.config.classes)
