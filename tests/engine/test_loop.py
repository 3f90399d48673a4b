"""The run engine survives kills, signals, full disks and crafted files, and repeats itself exactly.

The oracle everywhere is an uninterrupted run of the same settings: whatever happens to a run
on the way, once resumed to the end its weights must equal that run's bit for bit.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_models import SEQUENCE

from atrous.engine.checkpoint import load_checkpoint
from atrous.engine.config import TrainConfig
from atrous.engine.loop import CheckpointEvery, TrainingDiverged, optimizer_step
from atrous.engine.run_dir import RunDir, RunLockedError, newest_checkpoint
from atrous.engine.sequence import sequence_config, train_sequence_run
from atrous.engine.trainer import train
from atrous.ops import clear_backend_cache, tuning_settings

TINY = {"model": "context_net", "model_kwargs": {"width_multiplier": 0.25}, "train_images": 12, "val_images": 4,
        "batch_size": 4, "epochs": 2, "device": "cpu"}
TINY_ARGS = ["--model-arg", "width_multiplier=0.25", "--train-images", "12", "--val-images", "4", "--batch-size", "4",
             "--epochs", "2", "--device", "cpu", "--no-progress"]
SEQ = {"steps": 12, "log_every": 4, "batch_size": 4, "length": 20, "eval_size": 8}
SEQ_MODEL = {key: SEQUENCE["tcn"][key] for key in ("hidden", "levels", "kernel_size")}  # the task sets the channels
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ATROUS_MALLOC": "system"}  # one thread, as in-process tests run


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(newest_checkpoint(run) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: segmentation and sequence (their backend choices go to this machine's record)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("reference")
    train(TrainConfig(**TINY), folder / "seg", progress=False, log=lambda _: None)
    train_sequence_run(sequence_config("adding", model_kwargs=SEQ_MODEL, **SEQ), folder / "seq", log=lambda _: None)
    return folder


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


# A run that SIGKILLs itself at its Nth tensor-file write: before it (``before``) or after it.
KILL_INSIDE_A_SAVE = """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from atrous.engine import checkpoint
    from atrous.engine.loop import CheckpointEvery
    kind, out, nth, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    real, calls = checkpoint._write_bytes, [0]
    def dying(path, data):
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, data)
        if calls[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint._write_bytes = dying
    every = CheckpointEvery(steps=1)
    if kind == "seg":
        from atrous.engine.config import TrainConfig
        from atrous.engine.trainer import train
        train(TrainConfig(**json.loads(sys.argv[5])), out, progress=False, every=every)
    else:
        from atrous.engine.sequence import sequence_config, train_sequence_run
        train_sequence_run(sequence_config("adding", **json.loads(sys.argv[5])), out, every=every)
"""


def _resume(kind: str, out: Path) -> None:
    quiet = {"log": lambda _: None}
    if kind == "seg":
        train(TrainConfig(**TINY), out, resume=True, progress=False, **quiet)
    else:
        train_sequence_run(sequence_config("adding", **SEQ), out, resume=True, **quiet)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "nth", "when"), [("seg", 3, "after"), ("seg", 8, "before"), ("seq", 4, "after")])
def test_kill_inside_a_save_then_resume_ends_bit_identical(reference, tmp_path, kind, nth, when):
    out = tmp_path / "run"
    settings = TINY if kind == "seg" else {**SEQ, "model_kwargs": SEQ_MODEL}
    done = _python(KILL_INSIDE_A_SAVE, kind, str(out), str(nth), when, json.dumps(settings))
    done.communicate(timeout=120)
    assert done.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the kill fell inside a save, which leaves its hidden folder"
    _resume(kind, out)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]  # cleaned on start
    assert_same_weights(reference / kind, out)
    history = json.loads((out / "metrics.json").read_text())["history"]
    expected = json.loads((reference / kind / "metrics.json").read_text())["history"]
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in expected]


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_ends_bit_identical(reference, tmp_path):
    rng = random.Random(14)
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        argv = [sys.executable, "-m", "atrous", "train", "--out", str(out), "--checkpoint-steps", "1", *TINY_ARGS]
        process = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        process.stdout.readline()  # the start-up line: training is about to start
        time.sleep(rng.uniform(0.0, 1.5))
        process.kill()
        process.communicate(timeout=60)
        if out.is_dir():
            _resume("seg", out)
        else:  # killed before the run existed: nothing to resume, start it again
            train(TrainConfig(**TINY), out, progress=False, log=lambda _: None)
        assert_same_weights(reference / "seg", out)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "signum", "code"), [("train", signal.SIGINT, 130), ("train-seq", signal.SIGTERM, 143)])
def test_a_signal_mid_epoch_saves_that_step_and_resume_finishes_exactly(reference, tmp_path, command, signum, code):
    out = tmp_path / "run"
    if command == "train":
        args = ["train", *TINY_ARGS, "--checkpoint-minutes", "1000"]
    else:
        args = ["train-seq", "--task", "adding", "--no-progress", "--checkpoint-minutes", "1000",
                *[f"--{k.replace('_', '-')}={v}" for k, v in {**SEQ, **SEQ_MODEL}.items()]]
    # The signal arrives at a step the run would not otherwise save: it must save that step itself.
    hook = """
        import os, runpy, signal, sys
        import torch
        torch.set_num_threads(1)
        from atrous.engine import loop
        real, calls, signum = loop.optimizer_step, [0], int(sys.argv[1])
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signum)
            return real(*args, **kwargs)
        loop.optimizer_step = step
        import atrous.engine.trainer, atrous.engine.sequence
        atrous.engine.trainer.optimizer_step = atrous.engine.sequence.optimizer_step = step
        sys.argv = ["atrous", *sys.argv[2:]]
        runpy.run_module("atrous", run_name="__main__")
    """
    process = _python(hook, str(int(signum)), *args, "--out", str(out))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stdout.startswith("run folder ")  # the start-up line comes first
    assert len(stderr.strip().splitlines()) == 1 and "--resume" in stderr
    saved = json.loads((newest_checkpoint(out) / "checkpoint.json").read_text())["meta"]["loop"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (0, 2, 2)
    _resume("seg" if command == "train" else "seq", out)
    assert_same_weights(reference / ("seg" if command == "train" else "seq"), out)


def test_two_fresh_runs_choose_alike_and_end_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    results = []
    for name in ("first", "second"):
        clear_backend_cache()  # a fresh process
        with tuning_settings(min_macs=0):  # time every dilated conv: the choices really come from timings
            train(TrainConfig(**{**TINY, "epochs": 1}), tmp_path / name, progress=False, log=lambda _: None)
        record = json.loads((newest_checkpoint(tmp_path / name) / "checkpoint.json").read_text())
        results.append(record["meta"]["backend_choices"])
    clear_backend_cache()
    assert results[0] and results[0] == results[1]
    assert list((tmp_path / "cache" / "atrous").glob("tuning-*.json"))
    assert_same_weights(tmp_path / "first", tmp_path / "second")
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())["history"]
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())["history"]
    assert [(r["train_loss"], r["val_miou"]) for r in first] == [(r["train_loss"], r["val_miou"]) for r in second]


def test_a_non_finite_loss_stops_before_the_update_and_saves_nothing_non_finite(tmp_path, monkeypatch):
    from atrous.engine import trainer

    real, calls = trainer.segmentation_loss, [0]

    def poisoned(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls[0] == 3 else loss

    monkeypatch.setattr(trainer, "segmentation_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3 \(learning rate [0-9.e-]+\): the loss is nan"):
        train(TrainConfig(**TINY), tmp_path / "run", progress=False, log=lambda _: None,
              every=CheckpointEvery(steps=1))
    saved = json.loads((newest_checkpoint(tmp_path / "run") / "checkpoint.json").read_text())["meta"]["loop"]
    assert saved["step"] == 2  # the diverged step was never saved
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())


def test_a_non_finite_gradient_leaves_the_weights_untouched():
    model = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (model.weight * 0).sum().sqrt()  # 0, finite; its gradient is 0 * 1/(2 sqrt(0)) = nan
    assert loss.item() == 0.0
    with pytest.raises(TrainingDiverged, match=r"step 7 \(learning rate 0.1\): the gradient norm is nan"):
        optimizer_step(model, optimizer, loss, step=7, lr=0.1)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_cli_divergence_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    from atrous.cli.main import main
    from atrous.engine import trainer

    monkeypatch.setattr(trainer, "segmentation_loss", lambda logits, masks, weight: logits.sum() * float("inf"))
    assert main(["train", *TINY_ARGS, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step 1" in err[0] and "learning rate" in err[0]


def test_a_full_disk_is_one_line_exit_1_and_the_run_resumes_once_fixed(reference, tmp_path, capsys, monkeypatch):
    import errno

    from atrous.cli.main import main
    from atrous.engine import checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "_write_bytes", full)
        assert main(["train", *TINY_ARGS, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert f"{out}/checkpoints/" in err[0] and ".tmp-" not in err[0]  # the save it was writing, not a hidden name
    assert newest_checkpoint(out) is None and not list((out / "checkpoints").iterdir())
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # the cause fixed: it starts from step 0
    assert_same_weights(reference / "seg", out)


def test_a_model_over_the_size_limit_is_refused_before_allocation(monkeypatch):
    from atrous.engine import trainer

    monkeypatch.setattr(trainer, "MAX_PARAMETERS", 1000)
    with pytest.raises(ValueError, match=r"would have 50,099 parameters; the limit is 1,000"):
        trainer.check_model_size("context_net", num_classes=11, width_multiplier=0.25)
    assert trainer.check_model_size("context_net", num_classes=11, width_multiplier=0.01) < 1000


def test_one_writer_per_run(tmp_path):
    train(TrainConfig(**{**TINY, "epochs": 1}), tmp_path / "run", progress=False, log=lambda _: None)
    holder = RunDir(tmp_path / "run", "segmentation", create=False)
    with pytest.raises(RunLockedError, match="in use by another atrous process"):
        train(TrainConfig(**TINY), tmp_path / "run", resume=True, progress=False, log=lambda _: None)
    with pytest.raises(RunLockedError):
        train(TrainConfig(**TINY), tmp_path / "run", overwrite=True, progress=False, log=lambda _: None)
    holder.close()
    result = train(TrainConfig(**TINY), tmp_path / "run", resume=True, epochs=2, progress=False, log=lambda _: None)
    assert [row["epoch"] for row in result["history"]] == [1, 2]


def test_a_sequence_run_is_not_resumed_as_segmentation(tmp_path):
    train_sequence_run(sequence_config("adding", model_kwargs=SEQ_MODEL, **{**SEQ, "steps": 4}), tmp_path / "seq",
                       log=lambda _: None)
    with pytest.raises(ValueError, match="is a sequence run"):
        train(TrainConfig(**TINY), tmp_path / "seq", resume=True, progress=False, log=lambda _: None)


def test_overwrite_refuses_symlinks_and_says_what_it_removed(tmp_path, capsys):
    from atrous.cli.main import main

    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(run)]) == 0
    link = tmp_path / "link"
    link.symlink_to(run)
    capsys.readouterr()
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(link), "--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err and (run / ".atrous-run").is_file()
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert "removed the previous run in" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--num-classes", "5"], "num_classes must be 11"), (["--seed", "-1"], "--seed must be an int from 0 to"),
     (["--model-arg", "width_multiplier=nope"], "width_multiplier"), (["--model-arg", "colour=1"], "colour"),
     (["--model-arg", "fuse_channels=100000000"], "33,700,044,707 parameters; the limit is 1,000,000,000"),
     (["--data", "/no/such/folder"], "no such folder"), (["--lr", "inf"], "--lr must be a finite number"),
     (["--checkpoint-minutes", "nan"], "--checkpoint-minutes must be a finite number")],
)
def test_a_failed_start_leaves_no_folder(tmp_path, capsys, args, message):
    from atrous.cli.main import main

    out = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [({"minutes": 0}, ValueError, "checkpoint minutes must be a finite number > 0, got 0"),
     ({"minutes": float("nan")}, ValueError, "checkpoint minutes must be a finite number > 0, got nan"),
     ({"minutes": "5"}, TypeError, "checkpoint minutes must be a finite number > 0, got '5'"),
     ({"steps": 0}, ValueError, "checkpoint steps must be an int >= 1, got 0"),
     ({"steps": True}, TypeError, "checkpoint steps must be an int >= 1, got True")],
)
def test_checkpoint_every_refuses_what_is_not_a_period(kwargs, error, message):
    with pytest.raises(error, match=message):
        CheckpointEvery(**kwargs)
    assert CheckpointEvery(minutes=None, steps=None) == CheckpointEvery(minutes=None)


@pytest.fixture()
def saved_run(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**TINY, "epochs": 1}), run, progress=False, log=lambda _: None, every=CheckpointEvery(steps=1))
    return run


def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda r: r["meta"]["loop"].update(epoch=10**30), "loop.epoch must be an int from 0 to 1"),
     (lambda r: r["meta"]["loop"].update(epoch=-2), "loop.epoch must be an int from 0 to 1"),
     (lambda r: r["meta"]["loop"].update(epoch=True), "loop.epoch must be an int from 0 to 1"),
     (lambda r: r["meta"]["loop"].update(best=float("nan")), "loop.best must be a number or null"),
     (lambda r: r["meta"]["loop"].update(step=99), "loop.step must be 3"),
     (lambda r: r["meta"]["loop"].update(loss_sum="a"), "loop.loss_sum must be a finite number"),
     (lambda r: r["meta"].pop("loop"), "field 'loop' must be an object"),
     (lambda r: r["meta"]["config"].update(epochs=1e30), "epochs must be an int from 1 to 100,000"),
     (lambda r: r["meta"]["config"]["model_kwargs"].update(width_multiplier=1e7), "width_multiplier must be a finite number"),
     (lambda r: r["meta"].update(config=[]), "the config must be a JSON object"),
     (lambda r: r.update(rng={"python": "!!", "numpy": [], "torch": ""}), "field rng.python"),
     (lambda r: r.update(files=[1]), "field 'files'"),
     (lambda r: r.update(meta="x"), "field 'meta' has the wrong type")],
)
def test_a_crafted_checkpoint_is_one_line_naming_file_and_field(saved_run, capsys, change, message):
    from atrous.cli.main import main

    _edit(newest_checkpoint(saved_run) / "checkpoint.json", change)
    assert main(["train", "--resume", str(saved_run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "checkpoint.json" in err[0], err


def test_a_flipped_byte_in_the_weights_is_refused_by_resume_and_eval(saved_run, capsys):
    from atrous.cli.main import main

    file = newest_checkpoint(saved_run) / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 1
    file.write_bytes(bytes(data))
    assert main(["train", "--resume", str(saved_run), "--no-progress"]) == 2
    assert "SHA-256" in capsys.readouterr().err
    best = newest_checkpoint(saved_run, "best") / "model.safetensors"
    best.write_bytes(best.read_bytes()[:-10])
    assert main(["eval", "--checkpoint", str(saved_run)]) == 2
    assert "SHA-256" in capsys.readouterr().err
    with pytest.raises(ValueError, match="SHA-256"):
        load_checkpoint(newest_checkpoint(saved_run, "best"), torch.nn.Module())


def test_a_resume_rewrites_outputs_a_crash_left_stale_and_keeps_the_users_dotfiles(saved_run):
    (saved_run / "metrics.json").write_text("{}")  # as if killed after the last save, before the outputs
    (saved_run / ".env.local").write_text("mine")
    (saved_run / ".metrics.csv.ab12cd34").write_text("half")  # an atomic write cut short
    train(None, saved_run, resume=True, progress=False, log=lambda _: None)
    assert len(json.loads((saved_run / "metrics.json").read_text())["history"]) == 1
    assert (saved_run / ".env.local").read_text() == "mine" and not (saved_run / ".metrics.csv.ab12cd34").exists()


def test_a_half_deleted_overwrite_and_the_current_folder(tmp_path, monkeypatch, capsys):
    from atrous.cli.main import main

    aside = tmp_path / ".run.tmp-0123"  # what a kill inside --overwrite's delete leaves
    aside.mkdir()
    (aside / "model.safetensors").write_text("x")
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert not aside.exists()
    monkeypatch.chdir(tmp_path / "run")
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", ".", "--overwrite"]) == 2
    assert "give a folder name" in capsys.readouterr().err and (tmp_path / "run" / ".atrous-run").is_file()
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(tmp_path / "run"), "--overwrite"]) == 2
    assert "is the current folder or holds it" in capsys.readouterr().err


def test_an_update_that_makes_the_weights_non_finite_is_divergence():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e38)
    loss = model(torch.full((1, 2), 1e3)).sum()  # finite loss, finite gradient of 1e3, update of 1e41
    with pytest.raises(TrainingDiverged, match="step 4 .*the update made the weights non-finite"):
        optimizer_step(model, optimizer, loss, step=4, lr=1e38)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["train", "--lr", "5"], "--lr: a resumed run keeps the settings"),
     (["train", "--seed", "3", "--batch-size", "2"], "--batch-size, --seed: a resumed run keeps"),
     (["train", "--epochs", "0"], "epochs must be an int from 1 to 100,000"),
     (["train"], None)],
)
def test_resume_takes_only_how_long_to_train(saved_run, capsys, argv, message):
    from atrous.cli.main import main

    code = main([*argv, "--resume", str(saved_run), "--no-progress"])
    assert code == (0 if message is None else 2)
    if message is not None:
        assert message in capsys.readouterr().err


def test_resume_cannot_shorten_a_run_and_an_empty_resume_is_refused(saved_run, capsys):
    from atrous.cli.main import main

    assert main(["train", "--resume", str(saved_run), "--epochs", "2", "--no-progress"]) == 0
    assert main(["train", "--resume", str(saved_run), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has done 2 epochs" in err and "cannot shorten it" in err
    assert json.loads((saved_run / "config.json").read_text())["epochs"] == 2  # not rewritten by the refused call
    assert main(["train", "--resume", "", "--no-progress"]) == 2
    assert "--resume needs the run folder" in capsys.readouterr().err


def test_train_seq_resume_extends_by_steps_and_bad_seeds_are_refused(tmp_path, capsys):
    from atrous.cli.main import main

    out = tmp_path / "seq"
    args = ["--task", "adding", "--no-progress", *[f"--{k.replace('_', '-')}={v}" for k, v in {**SEQ, **SEQ_MODEL}.items()]]
    assert main(["train-seq", *args, "--steps", "4", "--out", str(out)]) == 0
    assert main(["train-seq", "--resume", str(out), "--steps", "8", "--no-progress"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [row["step"] for row in history] == [4, 8]
    assert main(["train-seq", *args, "--seed", str(2**32), "--out", str(tmp_path / "big")]) == 2
    assert "--seed must be an int from 0 to 4,294,967,295" in capsys.readouterr().err and not (tmp_path / "big").exists()
