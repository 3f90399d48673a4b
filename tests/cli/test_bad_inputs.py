"""Bad inputs to ``eval``, ``predict``, ``rf``, ``generate`` and ``export``, and to the public API.

Every case must exit with code 2 (a usage or input error) and print exactly one line on stderr
that names the culprit (the option or the file), and must leave every folder as it was: no
output, no partial file, no temporary file, nothing written through a symbolic link. A full disk
is an error of the environment (exit 1) that leaves no partial file either.
"""

from __future__ import annotations

import math
import os
import pathlib
import wave

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import SEQUENCE, create_tiny

from atrous.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore")

WAVENET = {**SEQUENCE["wavenet"], "classes": 256}  # audio: 256 mu-law classes


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny segmentation run, a tiny audio WaveNet checkpoint, a good image and a truncated one."""
    from atrous.engine.checkpoint import save_checkpoint
    from atrous.engine.config import TrainConfig
    from atrous.engine.trainer import train
    from atrous.models import create

    root = tmp_path_factory.mktemp("bad-inputs")
    seg = root / "seg"
    config = TrainConfig(model_kwargs={"width_multiplier": 0.25}, train_images=8, val_images=4, batch_size=4,
                         epochs=1, device="cpu")
    train(config, seg, progress=False, log=lambda *args, **kwargs: None)
    audio = root / "audio"
    torch.manual_seed(0)
    save_checkpoint(audio, create("wavenet", **WAVENET),
                    meta={"model": "wavenet", "model_kwargs": WAVENET, "task": "audio", "sample_rate": 8000})
    images = root / "images"
    images.mkdir()
    pixels = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(images / "ok.png")
    data = (images / "ok.png").read_bytes()
    (images / "corrupt.png").write_bytes(data[: len(data) // 2])  # a valid header, then the data stops
    Image.fromarray(pixels).save(images / "x.png")
    Image.fromarray(pixels).save(images / "x_overlay.png")
    return {"seg": str(seg), "audio": str(audio), "images": images, "root": root,
            "ok": str(images / "ok.png"), "corrupt": str(images / "corrupt.png")}


def listing(folder: pathlib.Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): kind, size and content digest."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath, name)
            if path.is_symlink():
                entries[str(path.relative_to(folder))] = ("link", os.readlink(path))
            elif path.is_file():
                entries[str(path.relative_to(folder))] = ("file", path.read_bytes())
            else:
                entries[str(path.relative_to(folder))] = ("dir",)
    return entries


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _setup_workspace(tmp: pathlib.Path) -> None:
    """Files some cases point at: an existing output, a plain file, links in and out of the folder."""
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "exists.wav").write_bytes(b"RIFF-kept")
    (tmp / "exists.png").write_bytes(b"PNG-kept")
    (tmp / "exists.onnx").write_bytes(b"ONNX-kept")
    (tmp / "folder").mkdir()
    (tmp / "outside").mkdir()
    (tmp / "outside" / "target.txt").write_text("outside")
    (tmp / "link.wav").symlink_to(tmp / "outside" / "target.txt")
    (tmp / "link.png").symlink_to(tmp / "outside" / "target.txt")
    (tmp / "link.onnx").symlink_to(tmp / "outside" / "missing.onnx")  # dangling


# (id, argv, culprit named on stderr); {seg}, {audio}, {ok}, {corrupt}, {images} are filled in
CASES = [
    # eval
    ("eval-scales-inf", "eval --checkpoint {seg} --scales inf", "--scales"),
    ("eval-scales-nan", "eval --checkpoint {seg} --scales nan", "--scales"),
    ("eval-scales-zero", "eval --checkpoint {seg} --scales 0,1", "--scales"),
    ("eval-scales-negative", "eval --checkpoint {seg} --scales -1", "--scales"),
    ("eval-scales-huge", "eval --checkpoint {seg} --scales 1,100", "--scales"),
    ("eval-scales-word", "eval --checkpoint {seg} --scales big", "--scales"),
    ("eval-batch-zero", "eval --checkpoint {seg} --batch-size 0", "--batch-size"),
    ("eval-batch-huge", "eval --checkpoint {seg} --batch-size 1000000", "--batch-size"),
    ("eval-batch-word", "eval --checkpoint {seg} --batch-size x", "--batch-size"),
    ("eval-max-pixels-zero", "eval --checkpoint {seg} --max-pixels 0", "--max-pixels"),
    ("eval-audio-checkpoint", "eval --checkpoint {audio}", "{audio}"),
    ("eval-missing-checkpoint", "eval --checkpoint nowhere/run", "nowhere/run"),
    ("eval-device", "eval --checkpoint {seg} --device gpu9", "--device"),
    # predict
    ("predict-scales-nan", "predict --checkpoint {seg} {ok} --out out --scales nan", "--scales"),
    ("predict-scales-inf", "predict --checkpoint {seg} {ok} --out out --scales 1,inf", "--scales"),
    ("predict-max-pixels-zero", "predict --checkpoint {seg} {ok} --out out --max-pixels 0", "--max-pixels"),
    ("predict-max-pixels-small", "predict --checkpoint {seg} {ok} --out out --max-pixels 10", "--max-pixels"),
    ("predict-ok-then-corrupt", "predict --checkpoint {seg} {ok} {corrupt} --out out", "{corrupt}"),
    ("predict-ok-then-missing", "predict --checkpoint {seg} {ok} missing.png --out out", "missing.png"),
    ("predict-out-is-file", "predict --checkpoint {seg} {ok} --out afile", "afile"),
    ("predict-out-below-file", "predict --checkpoint {seg} {ok} --out afile/sub", "afile"),
    ("predict-out-dangling-link", "predict --checkpoint {seg} {ok} --out link.onnx", "link.onnx"),
    ("predict-same-stem", "predict --checkpoint {seg} {ok} {images}/../images/ok.png --out out", "'ok'"),
    ("predict-colliding-outputs", "predict --checkpoint {seg} {images}/x.png {images}/x_overlay.png --out out",
     "x_overlay.png"),
    ("predict-audio-checkpoint", "predict --checkpoint {audio} {ok} --out out", "{audio}"),
    # rf
    ("rf-kernel-zero", "rf --kernel 0", "--kernel"),
    ("rf-kernel-huge", "rf --kernel 100000", "--kernel"),
    ("rf-channels-zero", "rf --channels 0", "--channels"),
    ("rf-channels-huge", "rf --channels 1000000", "--channels"),
    ("rf-rates-zero", "rf --rates 1,0", "--rates"),
    ("rf-rates-nan", "rf --rates 1,nan", "--rates"),
    ("rf-rates-huge", "rf --rates 99999999999999999999", "--rates"),
    ("rf-model-empty", ["rf", "--model", ""], "--model"),
    ("rf-model-unknown", "rf --model nope", "--model"),
    ("rf-input-word", "rf --input 3,x,64", "--input"),
    ("rf-input-huge", "rf --model context_net --input 3,100000,100000", "--input"),
    ("rf-input-dims", "rf --rates 1,2 --dims 1 --input 4,64,64", "--input"),
    ("rf-dims", "rf --dims 3", "--dims"),
    ("rf-check-hdc-empty", ["rf", "--check-hdc", ""], "--check-hdc"),
    ("rf-check-hdc-huge", "rf --check-hdc 1,2000000", "--check-hdc"),
    ("rf-plot-jpg", "rf --plot cover.jpg", "--plot"),
    ("rf-plot-exists", "rf --plot exists.png", "--plot"),
    ("rf-plot-link", "rf --plot link.png --overwrite", "--plot"),
    ("rf-plot-no-folder", "rf --plot nowhere/cover.png", "--plot"),
    # generate
    ("generate-seconds-inf", "generate --checkpoint {audio} --seconds inf --out a.wav", "--seconds"),
    ("generate-seconds-nan", "generate --checkpoint {audio} --seconds nan --out a.wav", "--seconds"),
    ("generate-seconds-zero", "generate --checkpoint {audio} --seconds 0 --out a.wav", "--seconds"),
    ("generate-seconds-negative", "generate --checkpoint {audio} --seconds -1 --out a.wav", "--seconds"),
    ("generate-seconds-huge", "generate --checkpoint {audio} --seconds 100000 --out a.wav", "--seconds"),
    ("generate-seconds-word", "generate --checkpoint {audio} --seconds long --out a.wav", "--seconds"),
    ("generate-too-many-samples", "generate --checkpoint {audio} --seconds 3000 --count 1000 --out a.wav",
     "--count"),
    ("generate-temperature-nan", "generate --checkpoint {audio} --seconds 0.01 --temperature nan --out a.wav",
     "--temperature"),
    ("generate-temperature-inf", "generate --checkpoint {audio} --seconds 0.01 --temperature inf --out a.wav",
     "--temperature"),
    ("generate-temperature-negative", "generate --checkpoint {audio} --seconds 0.01 --temperature -1 --out a.wav",
     "--temperature"),
    ("generate-rate-negative", "generate --checkpoint {audio} --seconds 0.01 --sample-rate -8000 --out a.wav",
     "--sample-rate"),
    ("generate-rate-zero", "generate --checkpoint {audio} --seconds 0.01 --sample-rate 0 --out a.wav",
     "--sample-rate"),
    ("generate-count-zero", "generate --checkpoint {audio} --seconds 0.01 --count 0 --out a.wav", "--count"),
    ("generate-count-huge", "generate --checkpoint {audio} --seconds 0.01 --count 100000 --out a.wav", "--count"),
    ("generate-seed-negative", "generate --checkpoint {audio} --seconds 0.01 --seed -1 --out a.wav", "--seed"),
    ("generate-threads-zero", "generate --checkpoint {audio} --seconds 0.01 --threads 0 --out a.wav", "--threads"),
    ("generate-no-folder", "generate --checkpoint {audio} --seconds 0.01 --out nowhere/a.wav", "--out"),
    ("generate-exists", "generate --checkpoint {audio} --seconds 0.01 --out exists.wav", "--overwrite"),
    ("generate-link", "generate --checkpoint {audio} --seconds 0.01 --out link.wav --overwrite", "link.wav"),
    ("generate-folder", "generate --checkpoint {audio} --seconds 0.01 --out folder", "--out"),
    ("generate-seg-checkpoint", "generate --checkpoint {seg} --seconds 0.01 --out a.wav", "{seg}"),
    ("generate-missing-checkpoint", "generate --checkpoint nowhere/run --seconds 0.01 --out a.wav", "nowhere/run"),
    # export
    ("export-opset-low", "export --checkpoint {seg} --out m.onnx --opset 17", "--opset"),
    ("export-opset-high", "export --checkpoint {seg} --out m.onnx --opset 99", "--opset"),
    ("export-opset-word", "export --checkpoint {seg} --out m.onnx --opset latest", "--opset"),
    ("export-height-small", "export --checkpoint {seg} --out m.onnx --height 4", "--height"),
    ("export-width-huge", "export --checkpoint {seg} --out m.onnx --width 100000", "--width"),
    ("export-format", "export --checkpoint {seg} --out m.onnx --format tflite", "--format"),
    ("export-out-folder", "export --checkpoint {seg} --out folder", "--out"),
    ("export-out-exists", "export --checkpoint {seg} --out exists.onnx", "--overwrite"),
    ("export-out-link", "export --checkpoint {seg} --out link.onnx --overwrite", "link.onnx"),
    ("export-no-folder", "export --checkpoint {seg} --out nowhere/m.onnx", "--out"),
    ("export-audio-checkpoint", "export --checkpoint {audio} --out m.onnx --height 16 --width 16", "{audio}"),
]


@pytest.mark.parametrize(("argv", "culprit"), [pytest.param(a, c, id=i) for i, a, c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(inputs, tmp_path, monkeypatch, capsys, argv, culprit):
    monkeypatch.chdir(tmp_path)
    _setup_workspace(tmp_path)
    fill = {key: value for key, value in inputs.items() if isinstance(value, str)} | {"images": str(inputs["images"])}
    argv = [arg.format(**fill) for arg in (argv.split() if isinstance(argv, str) else argv)]
    culprit = culprit.format(**fill)
    before, inputs_before = listing(tmp_path), listing(inputs["root"])
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err) == 1, err
    assert culprit in err[0] and "Traceback" not in err[0], err[0]
    assert listing(tmp_path) == before  # no output, no temporary file, nothing through a link
    assert listing(inputs["root"]) == inputs_before


def test_predict_refuses_a_link_in_out_and_writes_nothing_outside(inputs, tmp_path, capsys):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"keep me")
    (out / "ok.png").symlink_to(outside / "victim.png")  # with --overwrite: onto the link's target
    (out / "ok_overlay.png").symlink_to(outside / "new.png")  # without: through a dangling link
    before = listing(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(["predict", "--checkpoint", inputs["seg"], inputs["ok"], "--out", str(out), *extra], capsys)
        assert code == 2 and len(err) == 1 and "symbolic link" in err[0] and str(out / "ok") in err[0], err
        assert (outside / "victim.png").read_bytes() == b"keep me"
        assert not (outside / "new.png").exists()
        assert listing(tmp_path) == before


def test_generate_keeps_an_existing_file_without_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "clip.wav"
    out.write_bytes(b"an older clip")
    argv = ["generate", "--checkpoint", inputs["audio"], "--seconds", "0.002", "--out", str(out), "--no-progress"]
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0] and str(out) in err[0]
    assert out.read_bytes() == b"an older clip"
    code, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0, err
    with wave.open(str(out), "rb") as handle:
        assert handle.getframerate() == 8000 and handle.getnframes() == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav"]


def _full_disk_after(monkeypatch, owner, name: str, calls: int) -> None:
    """Make ``owner.name`` write part of its output and fail with ENOSPC from call ``calls`` on."""
    original, count = getattr(owner, name), [0]

    def write(self, target, *args, **kwargs):
        count[0] += 1
        if count[0] < calls:
            return original(self, target, *args, **kwargs)
        path = target if isinstance(target, (str, os.PathLike)) else self
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(owner, name, write)


def test_predict_on_a_full_disk_leaves_no_partial_file(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _full_disk_after(monkeypatch, Image.Image, "save", calls=2)  # the mask fits, the overlay does not
    code, err = run_cli(["predict", "--checkpoint", inputs["seg"], inputs["ok"], "--out", str(out)], capsys)
    assert code == 1 and len(err) == 1, err
    assert str(out / "ok_overlay.png") in err[0] and "No space left on device" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["ok.png"]  # whole, and no temporary file
    with Image.open(out / "ok.png") as mask:
        assert mask.mode == "P" and mask.size == (24, 20)


def test_generate_on_a_full_disk_leaves_no_partial_file(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "clip.wav"

    def full(self, data):
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    argv = ["generate", "--checkpoint", inputs["audio"], "--seconds", "0.002", "--out", str(out), "--no-progress"]
    code, err = run_cli(argv, capsys)
    assert code == 1 and len(err) == 1 and str(out) in err[0] and "No space left" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_missing_optional_dependency_names_the_extra(inputs, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    code, err = run_cli(["export", "--checkpoint", inputs["seg"], "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "pip install 'atrous[onnx]'" in err[0] and "onnxscript" in err[0]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, err = run_cli(["rf", "--plot", str(tmp_path / "cover.png")], capsys)
    assert code == 2 and len(err) == 1 and "pip install 'atrous[plot]'" in err[0]
    assert list(tmp_path.iterdir()) == []


# The public API: errors name the argument, the value and what is allowed.
def _wavenet():
    from atrous.models import create

    return create("wavenet", **WAVENET).eval()


def _tcn():
    return create_tiny("tcn").eval()


def _api_cases():
    from atrous.data.sequence import write_wav
    from atrous.engine.evaluate import predict_probabilities
    from atrous.models import create
    from atrous.ops.layers import CausalConv1d, DilatedConv2d, DilatedStack
    from atrous.streaming import Streamer, sample_autoregressive

    nan, inf = math.nan, math.inf
    channels = SEQUENCE["tcn"]["in_channels"]
    return [
        ("conv-in-zero", lambda: DilatedConv2d(0, 4, 3), ValueError, "in_channels must be an int >= 1, got 0"),
        ("conv-in-str", lambda: DilatedConv2d("a", 4, 3), TypeError, "in_channels must be an int >= 1, got 'a'"),
        ("conv-out-float", lambda: DilatedConv2d(4, 4.0, 3), TypeError, "out_channels"),
        ("conv-groups", lambda: DilatedConv2d(4, 6, 3, groups=4), ValueError, "out_channels=6 .* groups=4"),
        ("conv-bias", lambda: DilatedConv2d(4, 4, 3, bias="yes"), TypeError, "bias must be True or False"),
        ("causal-kernel", lambda: CausalConv1d(4, 4, 0), ValueError, "kernel_size"),
        ("stack-channels", lambda: DilatedStack(0, [1, 2]), ValueError, "channels must be an int >= 1"),
        ("stack-rate-nan", lambda: DilatedStack(4, [1, nan]), TypeError, "rates"),
        ("stack-activation", lambda: DilatedStack(4, [1, 2], activation=5), TypeError, "activation"),
        ("width-nan", lambda: create("context_net", num_classes=2, width_multiplier=nan), ValueError, "width_multiplier.*nan"),
        ("width-inf", lambda: create("resnet18", width_multiplier=inf), ValueError, "width_multiplier.*inf"),
        ("width-huge", lambda: create("context_net", num_classes=2, width_multiplier=1e6), ValueError, "width_multiplier.*<= 64"),
        ("dropout-nan", lambda: create("dilation8_vgg16", num_classes=2, dropout=nan, width_multiplier=0.05), ValueError,
         "dropout.*nan"),
        ("init-std-nan", lambda: create("tcn", init_std=nan), ValueError, "init_std.*nan"),
        ("tcn-levels", lambda: create("tcn", levels=100), ValueError,
         "levels must be an int from 1 to 32, got 100"),
        ("wavenet-layers", lambda: create("wavenet", layers=1000), ValueError,
         "layers must be an int from 1 to 32"),
        ("wavenet-kernel-str", lambda: create("wavenet", kernel_size="2"), TypeError, "kernel_size.*'2'"),
        ("context-norm", lambda: create("context_net", num_classes=2, norm="yes"), TypeError, "norm must be True or False"),
        ("streamer-float64", lambda: Streamer(_tcn(), 1).step(torch.zeros(1, channels, 3, dtype=torch.float64)),
         TypeError, "dtype torch.float64 but the model's parameters are torch.float32"),
        ("streamer-ints", lambda: Streamer(_tcn(), 1).step(torch.zeros(1, channels, 3, dtype=torch.long)),
         TypeError, "torch.int64"),
        ("streamer-reset-float", lambda: Streamer(_tcn(), 2).reset(1.5), TypeError, "indices"),
        ("streamer-reset-str", lambda: Streamer(_tcn(), 2).reset(["a"]), TypeError, "indices"),
        ("sample-temperature-nan", lambda: sample_autoregressive(_wavenet(), 4, temperature=nan), ValueError,
         "temperature.*nan"),
        ("sample-temperature-inf", lambda: sample_autoregressive(_wavenet(), 4, temperature=inf), ValueError,
         "temperature.*inf"),
        ("sample-first", lambda: sample_autoregressive(_wavenet(), 4, first=256), ValueError, r"first.*\[0, 256\)"),
        ("scales-nan", lambda: predict_probabilities(_tcn(), torch.zeros(1, 3, 8, 8), scales=(nan,)), ValueError,
         "scales"),
        ("wav-rate", lambda: write_wav("unused.wav", np.zeros(4), -8000), ValueError, "sample_rate.*-8000"),
        ("wav-nan", lambda: write_wav("unused.wav", np.array([0.0, nan]), 8000), ValueError, "finite; sample 1"),
        ("wav-no-folder", lambda: write_wav("nowhere/x.wav", np.zeros(4), 8000), FileNotFoundError, "nowhere"),
    ]


@pytest.mark.parametrize("index", range(len(_api_cases())), ids=[case[0] for case in _api_cases()])
def test_public_api_names_the_argument(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, call, error, pattern = _api_cases()[index]
    with pytest.raises(error, match=pattern):
        call()
    assert list(tmp_path.iterdir()) == []


def test_small_temperatures_sample_the_most_likely_class():
    from atrous.streaming import sample_autoregressive

    model = _wavenet()
    greedy = sample_autoregressive(model, 6, temperature=0)
    assert torch.equal(sample_autoregressive(model, 6, temperature=1e-30), greedy)  # no overflow to nan


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_export_onnx_checks_the_path_before_exporting(kind, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    import atrous.export.onnx as onnx_export
    from atrous.export import export_onnx
    from atrous.ops.layers import DilatedConv2d

    def no_export(*args, **kwargs):
        raise AssertionError("the export ran before the path was checked")

    monkeypatch.setattr(onnx_export, "_capture", no_export)
    if kind == "folder":
        path, error, pattern = tmp_path / "folder", IsADirectoryError, "is a folder"
        path.mkdir()
    else:
        path, error, pattern = tmp_path / "m.onnx", ValueError, "symbolic link"
        path.symlink_to(tmp_path / "elsewhere.onnx")
    before = listing(tmp_path)
    with pytest.raises(error, match=pattern):
        export_onnx(DilatedConv2d(3, 2, 3), path, torch.zeros(1, 3, 8, 8))
    assert listing(tmp_path) == before


def test_the_cli_sample_rate_bound_is_the_engine_one():
    """``atrous generate`` cannot import the engine at --help time (it imports torch), so it keeps
    its own copy of the bound; the two must agree."""
    from atrous.cli.generate import MAX_RATE
    from atrous.engine.generate import MAX_SAMPLE_RATE

    assert MAX_RATE == MAX_SAMPLE_RATE
