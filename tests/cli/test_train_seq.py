"""``atrous train-seq`` and ``atrous generate`` end to end on tiny models and generated audio."""

import json
import wave

import numpy as np
import pytest
import torch
from tiny_models import SEQUENCE

from atrous.cli import main as cli_main
from atrous.engine.checkpoint import load_checkpoint
from atrous.models import create


@pytest.fixture(autouse=True)
def _wired(monkeypatch):
    """Make sure both subcommands are reachable through ``atrous`` (whether or not main wires them)."""
    commands = dict(cli_main.SUBCOMMANDS)
    commands.setdefault("train-seq", "atrous.cli.train_seq")
    commands.setdefault("generate", "atrous.cli.generate")
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", commands)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TCN, WAVENET = SEQUENCE["tcn"], SEQUENCE["wavenet"]  # the task sets the channels in and out (classes for audio)
TINY_TCN = ["--hidden", str(TCN["hidden"]), "--levels", str(TCN["levels"]), "--kernel-size", str(TCN["kernel_size"]),
            "--log-every", "2", "--eval-size", "8"]
TINY_WAVENET = ["--blocks", str(WAVENET["blocks"]), "--layers", str(WAVENET["layers"]),
                "--channels", str(WAVENET["residual_channels"]), "--log-every", "2"]  # gate 2x, skip 1x --channels


def test_adding_run_writes_checkpoint_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train-seq", "--task", "adding", "--out", str(out), "--steps", "4", "--batch-size", "4",
            "--length", "20", *TINY_TCN]
    assert cli_main.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in metrics["history"]] == [2, 4] and metrics["final"]["eval_loss"] > 0
    meta = load_checkpoint(out)
    assert meta["model"] == "tcn" and meta["task"] == "adding" and meta["config"]["length"] == 20
    model = create(meta["model"], **meta["model_kwargs"])
    load_checkpoint(out, model)
    field = 1 + 2 * (TCN["kernel_size"] - 1) * (2 ** TCN["levels"] - 1)  # Bai et al.: two convs per level at 2**i
    assert model.receptive_field == meta["receptive_field"] == field
    # an existing run folder is refused, one line on stderr, exit 2
    capsys.readouterr()
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert cli_main.main([*argv, "--overwrite"]) == 0


def test_copy_run_uses_the_paper_optimiser(tmp_path):
    out = tmp_path / "copy"
    argv = ["train-seq", "--task", "copy", "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--length", "10", *TINY_TCN]
    assert cli_main.main(argv) == 0
    meta = load_checkpoint(out)
    assert meta["config"]["optimizer"] == "rmsprop" and meta["model_kwargs"]["in_channels"] == 10


def write_tone(path, rate=8000, seconds=0.5):
    t = np.arange(int(rate * seconds)) / rate
    pcm = np.round(0.5 * np.sin(2 * np.pi * 200 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def test_audio_training_then_generation(tmp_path, capsys):
    data = tmp_path / "wavs"
    data.mkdir()
    write_tone(data / "a.wav")
    write_tone(data / "b.wav", seconds=0.3)
    run = tmp_path / "audio"
    argv = ["train-seq", "--task", "audio", "--data", str(data), "--out", str(run), "--steps", "2",
            "--batch-size", "2", "--length", "16", *TINY_WAVENET]
    assert cli_main.main(argv) == 0
    assert load_checkpoint(run)["sample_rate"] == 8000
    wav = tmp_path / "x.wav"
    argv = ["generate", "--checkpoint", str(run), "--seconds", "0.01", "--out", str(wav), "--count", "2"]
    assert cli_main.main(argv) == 0
    for i in range(2):
        with wave.open(str(tmp_path / f"x_{i}.wav"), "rb") as handle:
            assert handle.getframerate() == 8000 and handle.getnframes() == 80 and handle.getsampwidth() == 2
    assert "80/80" in capsys.readouterr().err  # the progress bar ran to the end


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    cases = [
        ["train-seq", "--task", "audio", "--out", str(tmp_path / "a")],  # no --data
        ["train-seq", "--task", "audio", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b")],
        ["train-seq", "--task", "adding", "--model", "wavenet", "--out", str(tmp_path / "c")],
        ["train-seq", "--task", "adding", "--out", str(tmp_path / "d"), "--steps", "0"],
        ["generate", "--checkpoint", str(tmp_path / "nothing"), "--seconds", "1", "--out", str(tmp_path / "x.wav")],
    ]
    for argv in cases:
        capsys.readouterr()
        assert cli_main.main(argv) == 2, argv
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    run = tmp_path / "adding"
    assert cli_main.main(["train-seq", "--task", "adding", "--out", str(run), "--steps", "1", "--batch-size", "2",
                          "--length", "8", *TINY_TCN]) == 0
    capsys.readouterr()
    argv = ["generate", "--checkpoint", str(run), "--seconds", "1", "--out", str(tmp_path / "y.wav")]
    assert cli_main.main(argv) == 2
    assert "train-seq --task audio" in capsys.readouterr().err
