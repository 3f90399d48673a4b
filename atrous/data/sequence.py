"""Sequence tasks: the adding problem, the copy memory task, and mu-law audio from WAV folders.

The two synthetic tasks follow Bai, Kolter & Koltun (2018), "An empirical evaluation of generic
convolutional and recurrent networks for sequence modeling", Section 5:

* Adding problem: an input of depth 2 and length ``T``; row 0 holds values uniform in
  ``[0, 1]``, row 1 is zero except for two entries set to 1; the target is the sum of the two
  marked values. Predicting 1 always gives MSE ``1/6 ~ 0.167`` (the variance of the sum).
* Copy memory: an input of length ``T + 20``; the first 10 symbols are drawn from ``1..8``,
  then zeros, and the last 11 entries are the symbol 9 (the first 9 is the delimiter). The
  target is zero everywhere except the last 10 steps, which repeat the first 10 symbols. A
  model that outputs zeros and then guesses uniformly scores ``10 ln 8 / (T + 20)``.

Audio follows WaveNet (van den Oord et al. 2016): 8- or 16-bit PCM is quantised to 256 classes
by mu-law companding, ``F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)`` with ``mu = 255``.
"""

from __future__ import annotations

import io
import math
import os
import wave
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from atrous._checks import check_int
from atrous._files import atomic_write

COPY_SYMBOLS = 10  # symbols 0..9: 0 blank, 1..8 data, 9 delimiter / recall marker
COPY_LENGTH = 10  # symbols to remember


def adding_problem(
    batch_size: int, length: int, *, halves: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the adding problem.

    Args:
        batch_size: number of sequences.
        length: sequence length ``T`` (>= 2).
        halves: place one marker in each half of the sequence (the Le et al. 2015 variant)
            instead of two distinct positions anywhere (Bai et al. 2018).
        generator: random generator.

    Returns:
        ``x``: ``(B, 2, T)`` float32; ``y``: ``(B,)`` float32, the sum of the marked values.
    """
    check_int(batch_size, "batch_size", low=1)
    check_int(length, "length", low=2)
    values = torch.rand(batch_size, length, generator=generator)
    if halves:
        half = length // 2
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, length, (batch_size,), generator=generator)
        positions = torch.stack([first, second], dim=1)
    else:
        positions = torch.rand(batch_size, length, generator=generator).argsort(dim=1)[:, :2]  # distinct
    markers = torch.zeros(batch_size, length).scatter_(1, positions, 1.0)
    target = values.gather(1, positions).sum(dim=1)
    return torch.stack([values, markers], dim=1), target


def copy_memory(
    batch_size: int, length: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the copy memory task; the sequence is ``length + 20`` long.

    Args:
        batch_size: number of sequences.
        length: the delay ``T`` (>= 1).
        generator: random generator.

    Returns:
        ``x``: ``(B, T + 20)`` int64 symbols in ``0..9``; ``y``: ``(B, T + 20)`` int64 targets.
        Use :func:`one_hot_symbols` to feed ``x`` to a convolutional model.
    """
    check_int(batch_size, "batch_size", low=1)
    check_int(length, "length", low=1)
    total = length + 2 * COPY_LENGTH
    data = torch.randint(1, 9, (batch_size, COPY_LENGTH), generator=generator)
    x = torch.zeros(batch_size, total, dtype=torch.long)
    x[:, :COPY_LENGTH] = data
    x[:, -(COPY_LENGTH + 1):] = 9
    y = torch.zeros(batch_size, total, dtype=torch.long)
    y[:, -COPY_LENGTH:] = data
    return x, y


def one_hot_symbols(x: torch.Tensor, classes: int = COPY_SYMBOLS) -> torch.Tensor:
    """``(B, T)`` int64 symbols -> ``(B, classes, T)`` float32 one-hot."""
    return torch.nn.functional.one_hot(x, classes).float().transpose(1, 2)


def copy_memory_baseline(length: int) -> float:
    """Cross-entropy of the memoryless strategy: zeros, then uniform over ``1..8`` for 10 steps."""
    return COPY_LENGTH * math.log(8) / (length + 2 * COPY_LENGTH)


def mu_law_encode(audio: torch.Tensor, classes: int = 256) -> torch.Tensor:
    """Quantise audio in ``[-1, 1]`` to ``classes`` mu-law bins (``mu = classes - 1``).

    Args:
        audio: float tensor of any shape, values in ``[-1, 1]`` (clipped).
        classes: number of bins.

    Returns:
        int64 tensor of the same shape, values in ``[0, classes)``.
    """
    mu = classes - 1
    x = audio.clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((companded + 1) / 2 * mu + 0.5).floor().long().clamp(0, mu)


def mu_law_decode(classes_ids: torch.Tensor, classes: int = 256) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: bin ids -> float audio in ``[-1, 1]``."""
    mu = classes - 1
    companded = 2 * classes_ids.double() / mu - 1
    return (torch.sign(companded) * ((1 + mu) ** companded.abs() - 1) / mu).float()


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a mono 8- or 16-bit PCM WAV file.

    Returns:
        ``(samples, sample_rate)``, samples float32 in ``[-1, 1]``, shape ``(N,)``.
    """
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width, rate = handle.getnchannels(), handle.getsampwidth(), handle.getframerate()
            frames = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(f"{str(path)!r} is not a readable PCM WAV file: {error}") from None
    if channels != 1:
        raise ValueError(f"{str(path)!r} has {channels} channels; only mono WAV files are supported")
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    else:
        raise ValueError(f"{str(path)!r} is {8 * width}-bit; only 8- and 16-bit PCM are supported")
    return samples, rate


def write_wav(path: str | os.PathLike, audio: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write mono float audio in ``[-1, 1]`` (clipped) as 16-bit PCM.

    The file is rendered in memory, written to a temporary name in its folder and renamed onto
    ``path`` (:func:`atrous._files.atomic_write`), so it is whole or absent; an existing
    file or symbolic link at ``path`` is replaced, never written through.

    Args:
        path: the ``.wav`` file; its folder must exist.
        audio: samples of any shape, flattened; finite.
        sample_rate: Hz, an int from 1 to 2**32 - 1 (the header's field).

    Raises:
        TypeError: a ``sample_rate`` that is not an int.
        ValueError: a ``sample_rate`` out of range or audio with NaN or infinity.
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    sample_rate = check_int(sample_rate, "sample_rate (Hz)", low=1, high=2**32 - 1, index=True)
    samples = np.asarray(audio, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(samples))
    if bad.size:
        raise ValueError(f"audio must be finite; sample {bad[0]} is {samples[bad[0]]}")
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(pcm.tobytes())
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of {str(path)!r} does not exist")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return path


class WavFolderDataset(Dataset):
    """Random mu-law windows from a folder of mono WAV files, for autoregressive training.

    Item ``i`` is a window of ``window + 1`` consecutive samples from a file picked with
    probability proportional to its length; ``x = ids[:-1]`` and ``y = ids[1:]``, so the logit
    at ``t`` is scored against the sample at ``t + 1``. Set ``window = receptive_field + N`` and
    score the last ``N`` outputs, which see a full receptive field.

    Example data: Debian's ``asterisk-core-sounds-en-wav`` package (``apt-get install
    asterisk-core-sounds-en-wav``) puts 568 mono 16-bit 8 kHz prompts, about 25 minutes of
    speech, in ``/usr/share/asterisk/sounds/en_US_f_Allison``.

    Args:
        root: a folder searched recursively for ``*.wav``.
        window: input length per item.
        items: the dataset's nominal length (windows are random; the index seeds them).
        classes: mu-law bins.
        seed: base seed; item ``i`` is reproducible.

    Shape:
        ``ds[i] -> (x (window,) int64, y (window,) int64)``.
    """

    def __init__(self, root: str | os.PathLike, window: int, *, items: int = 10_000, classes: int = 256, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"audio folder {str(root)!r} does not exist or is not a folder")
        check_int(window, "window", low=1)
        check_int(items, "items", low=1)
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav")
        if not paths:
            raise FileNotFoundError(f"audio folder {str(root)!r} holds no .wav files")
        self.window, self.items, self.classes, self.seed = window, items, classes, seed
        self.tracks: list[torch.Tensor] = []
        self.sample_rate: int | None = None
        for path in paths:
            samples, rate = read_wav(path)
            if self.sample_rate is None:
                self.sample_rate = rate
            elif rate != self.sample_rate:
                raise ValueError(
                    f"{str(path)!r} has sample rate {rate} Hz but {str(paths[0])!r} has {self.sample_rate} Hz; "
                    "all files must share one rate"
                )
            if len(samples) > window:
                self.tracks.append(mu_law_encode(torch.from_numpy(samples.copy()), classes))
        if not self.tracks:
            raise ValueError(f"every WAV file in {str(root)!r} is shorter than window + 1 = {window + 1} samples")
        lengths = torch.tensor([len(t) - window for t in self.tracks], dtype=torch.float64)
        self.weights = lengths / lengths.sum()

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.items:
            raise IndexError(f"index {index} out of range for {self.items} items")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        track = self.tracks[int(torch.multinomial(self.weights, 1, generator=generator))]
        start = int(torch.randint(0, len(track) - self.window, (1,), generator=generator))
        ids = track[start : start + self.window + 1]
        return ids[:-1], ids[1:]
