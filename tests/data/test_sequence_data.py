"""Task generators against Bai et al. (2018)'s definitions; mu-law against its formula; WAV I/O."""

import math
import wave

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atrous.data.sequence import (
    WavFolderDataset,
    adding_problem,
    copy_memory,
    copy_memory_baseline,
    mu_law_decode,
    mu_law_encode,
    one_hot_symbols,
    read_wav,
    write_wav,
)


@pytest.mark.parametrize("halves", [False, True])
def test_adding_problem_definition(halves):
    x, y = adding_problem(64, 30, halves=halves, generator=torch.Generator().manual_seed(0))
    values, markers = x[:, 0].numpy(), x[:, 1].numpy()
    assert x.shape == (64, 2, 30) and y.shape == (64,)
    assert (values >= 0).all() and (values <= 1).all()
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers.sum(axis=1) == 2).all()  # exactly two marked positions
    for row in range(64):
        marked = np.flatnonzero(markers[row])
        assert y[row].item() == pytest.approx(values[row, marked].sum(), abs=1e-6)
        if halves:
            assert marked[0] < 15 <= marked[1]
    assert abs(values.mean() - 0.5) < 0.05 and values.std() > 0.25  # U(0, 1): mean 1/2, std 0.29


def test_adding_problem_constant_guess_scores_one_sixth():
    # the sum of two independent U(0, 1) has variance 2/12: the MSE of always predicting 1
    _, y = adding_problem(20000, 10, generator=torch.Generator().manual_seed(1))
    assert F.mse_loss(torch.ones_like(y), y).item() == pytest.approx(1 / 6, abs=0.01)


def test_copy_memory_definition():
    T = 25
    x, y = copy_memory(16, T, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, T + 20)
    data = x[:, :10]
    assert data.min() >= 1 and data.max() <= 8
    assert (x[:, 10 : T + 9] == 0).all()  # blanks
    assert (x[:, T + 9 :] == 9).all()  # the last 11 entries are 9, the first 9 the delimiter
    assert (y[:, : T + 10] == 0).all() and torch.equal(y[:, T + 10 :], data)
    assert len(torch.unique(data)) == 8  # all of 1..8 occur in 160 draws


def test_copy_memory_baseline_is_the_memoryless_cross_entropy():
    T = 40
    x, y = copy_memory(8, T, generator=torch.Generator().manual_seed(0))
    # memoryless strategy: certain 0 before the recall, uniform over 1..8 during it
    probs = torch.zeros(8, 10, T + 20)
    probs[:, 0, : T + 10] = 1.0
    probs[:, 1:9, T + 10 :] = 1 / 8
    loss = F.nll_loss(probs.clamp_min(1e-30).log(), y)
    assert loss.item() == pytest.approx(copy_memory_baseline(T), rel=1e-5)
    assert one_hot_symbols(x).shape == (8, 10, T + 20)


def test_mu_law_matches_the_formula():
    x = torch.linspace(-1, 1, 1001)
    mu = 255
    expected = np.floor((np.sign(x.numpy()) * np.log1p(mu * np.abs(x.numpy())) / np.log1p(mu) + 1) / 2 * mu + 0.5)
    assert np.array_equal(mu_law_encode(x).numpy(), expected.astype(np.int64))
    assert mu_law_encode(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
    ids = mu_law_encode(x)
    assert (ids[1:] >= ids[:-1]).all()  # monotonic
    # decoding then encoding returns the bin; the round-trip error is largest at full scale
    assert torch.equal(mu_law_encode(mu_law_decode(torch.arange(256))), torch.arange(256))
    err = (mu_law_decode(ids) - x).abs()
    assert err.max() < 0.05 and err[495:506].max() < 1e-3  # fine steps near zero


def write_pcm(path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        if width == 1:
            handle.writeframes((np.round(samples * 127) + 128).astype(np.uint8).tobytes())
        else:
            handle.writeframes((np.round(samples * 32767)).astype("<i2").tobytes())


@pytest.mark.parametrize("width", [1, 2])
def test_read_wav_8_and_16_bit(tmp_path, width):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000)
    write_pcm(tmp_path / "a.wav", tone, 8000, width)
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and samples.shape == (800,)
    assert np.abs(samples - tone).max() < (1 / 100 if width == 1 else 1e-4)


def test_write_wav_round_trip(tmp_path):
    tone = 0.25 * np.sin(np.arange(100) / 5)
    write_wav(tmp_path / "b.wav", tone, 16000)
    samples, rate = read_wav(tmp_path / "b.wav")
    assert rate == 16000 and np.abs(samples - tone).max() < 1e-4


def test_wav_folder_dataset_gives_shifted_mu_law_windows(tmp_path):
    tone = 0.8 * np.sin(2 * np.pi * np.arange(3000) / 37)
    write_pcm(tmp_path / "a.wav", tone, 8000)
    (tmp_path / "sub").mkdir()
    write_pcm(tmp_path / "sub" / "b.wav", -tone[:500], 8000)
    ds = WavFolderDataset(tmp_path, 64, items=20, seed=3)
    assert len(ds) == 20 and ds.sample_rate == 8000
    x, y = ds[5]
    assert x.shape == y.shape == (64,) and torch.equal(x[1:], y[:-1])
    files = (tmp_path / "a.wav", tmp_path / "sub" / "b.wav")
    encoded = [mu_law_encode(torch.from_numpy(read_wav(p)[0])) for p in files]
    joined = torch.cat([x, y[-1:]])
    assert any(any(torch.equal(t[i : i + 65], joined) for i in range(len(t) - 64)) for t in encoded)
    assert torch.equal(ds[5][0], x)  # reproducible per index


def test_wav_folder_errors_name_the_file(tmp_path):
    write_pcm(tmp_path / "a.wav", np.zeros(200), 8000)
    write_pcm(tmp_path / "b.wav", np.zeros(200), 16000)
    with pytest.raises(ValueError, match=r"b\.wav.*16000 Hz.*8000 Hz"):
        WavFolderDataset(tmp_path, 32)
    stereo = tmp_path / "stereo"
    stereo.mkdir()
    write_pcm(stereo / "s.wav", np.zeros(400), 8000, channels=2)
    with pytest.raises(ValueError, match=r"s\.wav.*2 channels"):
        WavFolderDataset(stereo, 32)
    with pytest.raises(FileNotFoundError, match="no .wav files"):
        WavFolderDataset(_empty(tmp_path), 32)
    with pytest.raises(ValueError, match="shorter than window"):
        WavFolderDataset(_short(tmp_path), 1000)


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


def _short(tmp_path):
    path = tmp_path / "short"
    path.mkdir()
    write_pcm(path / "c.wav", np.zeros(100), 8000)
    return path


def test_generators_reject_bad_sizes():
    with pytest.raises(ValueError, match="length must be an int >= 2, got 1"):
        adding_problem(4, 1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        copy_memory(0, 10)
    assert math.isclose(copy_memory_baseline(1000), 10 * math.log(8) / 1020)
