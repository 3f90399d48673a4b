"""Sequence training: settings validated up front, the task recipes, batches that depend on
(seed, step) alone, the task losses against NumPy, and a short run that learns."""

import math

import numpy as np
import pytest
import torch

from atrous.engine.sequence import (
    MAX_BATCH_SAMPLES,
    MODEL_PRESETS,
    TASK_PRESETS,
    SequenceJob,
    SequenceTrainConfig,
    evaluate_synthetic,
    sequence_config,
    synthetic_batch,
    task_loss,
    train_sequence,
)
from atrous.models import create

TINY_TCN = {"hidden": 4, "levels": 2, "kernel_size": 3}


def tiny_job(seed=0, task="adding", **overrides) -> SequenceJob:
    values = {"length": 12, "batch_size": 4, "steps": 10, "log_every": 4, "eval_size": 8, "seed": seed, **overrides}
    return SequenceJob(sequence_config(task, model_kwargs=TINY_TCN, **values))


@pytest.mark.parametrize(
    ("values", "error", "pattern"),
    [({"task": "speech"}, ValueError, "task must be one of"), ({"optimizer": "adamw"}, ValueError, "optimizer must be"),
     ({"model": "rnn"}, ValueError, "model must be one of"),
     ({"steps": 0}, ValueError, r"steps must be an int from 1 to 1,000,000,000, got 0"),
     ({"batch_size": 65_537}, ValueError, "batch_size must be an int"),
     ({"length": True}, TypeError, "length must be an int"),
     ({"eval_size": 2.0}, TypeError, "eval_size must be an int"), ({"log_every": "10"}, TypeError, "log_every must be an int"),
     ({"lr": "0.1"}, TypeError, "lr must be a finite number"), ({"config_version": 3}, ValueError, "config_version must be"),
     ({"seed": -1}, ValueError, "seed must be an int"), ({"seed": 2**32}, ValueError, "seed must be an int"),
     ({"lr": 0.0}, ValueError, "lr must be a finite number > 0"), ({"lr": math.nan}, ValueError, "lr must be a finite"),
     ({"grad_clip": -1.0}, ValueError, "grad_clip must be a finite number >= 0"),
     ({"grad_clip": math.inf}, ValueError, "grad_clip must be a finite"),
     ({"model": "wavenet"}, ValueError, "task 'adding' needs model tcn"),
     ({"task": "audio", "model": "tcn", "data": "songs"}, ValueError, "task 'audio' needs model wavenet"),
     ({"task": "audio", "model": "wavenet"}, ValueError, "task 'audio' needs data"),
     ({"model_kwargs": [1]}, TypeError, "model_kwargs must be a dict")],
)
def test_bad_settings_are_named(values, error, pattern):
    with pytest.raises(error, match=pattern):
        SequenceTrainConfig(**values)


def test_one_batch_must_fit_in_memory():
    SequenceTrainConfig(batch_size=64, length=MAX_BATCH_SAMPLES // 64, eval_size=1)
    with pytest.raises(ValueError, match="batch_size x length must be at most"):
        SequenceTrainConfig(batch_size=64, length=MAX_BATCH_SAMPLES // 64 + 1, eval_size=1)
    with pytest.raises(ValueError, match="eval_size x length must be at most"):
        SequenceTrainConfig(batch_size=1, length=MAX_BATCH_SAMPLES // 64 + 1, eval_size=64)


def test_a_saved_config_reads_back_equal_and_bad_ones_name_their_source():
    config = sequence_config("copy", steps=7, seed=3, model_kwargs={"hidden": 6})
    assert SequenceTrainConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    with pytest.raises(ValueError, match="run/config.json: the config must be a JSON object"):
        SequenceTrainConfig.from_dict("adding", source="run/config.json")
    with pytest.raises(ValueError, match="run/config.json: steps must be an int"):
        SequenceTrainConfig.from_dict({"steps": 0}, source="run/config.json")


@pytest.mark.parametrize(("task", "sequence_length"), [("adding", 600), ("copy", 1000 + 20)])
def test_task_recipes_are_bai_et_al_and_their_tcn_sees_the_whole_sequence(task, sequence_length):
    config = sequence_config(task)
    assert {name: getattr(config, name) for name in TASK_PRESETS[task]} == TASK_PRESETS[task]
    assert config.model_kwargs == MODEL_PRESETS[task]
    # the output at the last step must read the first one (adding's first marker, copy's symbols)
    assert create(config.model, **config.model_kwargs).receptive_field >= sequence_length


def test_audio_recipe_is_a_wavenet_of_three_blocks_of_ten_layers():
    config = sequence_config("audio", data="songs")
    assert config.model == "wavenet" and config.data == "songs"
    # dilations 1, 2, ..., 512 in each block, kernel 2: 3 * 1023 + 1 samples (van den Oord et al. 2016)
    assert create(config.model, **config.model_kwargs).receptive_field == 3 * 1023 + 1
    with pytest.raises(ValueError, match="task 'audio' needs data"):
        sequence_config("audio")


def test_overrides_take_precedence_over_the_recipe():
    config = sequence_config("adding", model_kwargs={"hidden": 5}, lr=0.1, length=30)
    assert (config.lr, config.length, config.optimizer) == (0.1, 30, TASK_PRESETS["adding"]["optimizer"])
    assert config.model_kwargs == {**MODEL_PRESETS["adding"], "hidden": 5}
    with pytest.raises(ValueError, match="task must be one of"):
        sequence_config("speech")


def test_a_batch_is_a_function_of_seed_and_step_alone():
    first = tiny_job(seed=5)
    late = first.batch(7)  # asked for out of order, before any other
    torch.manual_seed(123)  # the global RNG state plays no part
    second = tiny_job(seed=5)
    in_order = [second.batch(step) for step in range(8)]
    for a, b in zip(late, in_order[7]):
        assert torch.equal(a, b)
    assert not torch.equal(in_order[6][0], in_order[7][0])
    assert not torch.equal(tiny_job(seed=6).batch(7)[0], late[0])
    x, y = late
    assert x.shape == (4, 2, 12) and y.shape == (4,)
    # the adding target is the sum of the two marked values
    torch.testing.assert_close(y, (x[:, 0] * x[:, 1]).sum(1))


def test_epochs_cut_the_steps_and_resume_at_any_step():
    job = tiny_job()  # 10 steps, 4 per epoch
    assert job.epochs == 3 and [job.steps_in(epoch) for epoch in range(3)] == [4, 4, 2]
    for epoch, start in [(0, 0), (1, 3), (2, 1)]:
        expected = [job.batch(step) for step in range(4 * epoch + start, 4 * epoch + job.steps_in(epoch))]
        got = list(job.batches(epoch, start))
        assert len(got) == len(expected)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected))


def test_the_evaluation_batch_is_fixed_by_the_seed():
    job, again = tiny_job(seed=2, task="copy"), tiny_job(seed=2, task="copy")
    x, y = job.evaluation
    assert x.shape == (8, 10, 12 + 20) and y.shape == (8, 12 + 20)
    assert torch.equal(x, again.evaluation[0]) and torch.equal(y, again.evaluation[1])
    torch.testing.assert_close(x.sum(1), torch.ones(8, 32))  # one-hot symbols
    assert not torch.equal(x, tiny_job(seed=3, task="copy").evaluation[0])


@pytest.mark.parametrize("seed", [0, 2])
def test_no_evaluation_sequence_is_trained_on(seed):
    job = tiny_job(seed=seed, task="copy")
    evaluation = {tuple(row.flatten().tolist()) for row in job.evaluation[0]}
    trained = {tuple(row.flatten().tolist()) for step in range(job.config.steps) for row in job.batch(step)[0]}
    assert not evaluation & trained


def test_runs_saved_before_the_version_keep_their_evaluation_batch():
    # Version 1 seeded the evaluation generator with seed + 1: a resumed old run must evaluate as it did.
    job = tiny_job(seed=0, task="copy")
    old = SequenceTrainConfig.from_dict({k: v for k, v in job.config.to_dict().items() if k != "config_version"})
    assert old.config_version == 1
    x, y = synthetic_batch("copy", old.eval_size, old.length, torch.Generator().manual_seed(1))
    assert torch.equal(SequenceJob(old).evaluation[0], x) and torch.equal(SequenceJob(old).evaluation[1], y)
    assert not torch.equal(job.evaluation[0], x)


def test_task_losses_match_numpy():
    generator = torch.Generator().manual_seed(0)
    output, target = torch.randn(3, 1, 9, generator=generator, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    expected = np.mean((output[:, 0, -1].numpy() - target.numpy()) ** 2)  # the last step only
    assert task_loss("adding", output, target).item() == pytest.approx(expected, rel=1e-12)

    logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 7), generator=generator)
    z = logits.permute(0, 2, 1).numpy()  # (B, T, K)
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_softmax, labels.numpy()[..., None], -1)[..., 0]  # (B, T)
    assert task_loss("copy", logits, labels).item() == pytest.approx(-picked.mean(), rel=1e-12)
    assert task_loss("audio", logits, labels, scored=3).item() == pytest.approx(-picked[:, -3:].mean(), rel=1e-12)
    assert task_loss("audio", logits, labels).item() == pytest.approx(-picked.mean(), rel=1e-12)
    with pytest.raises(ValueError, match="task must be one of"):
        task_loss("speech", logits, labels)


@pytest.mark.parametrize("task", ["adding", "copy"])
def test_evaluation_in_chunks_is_the_mean_over_the_whole_batch(task):
    job = tiny_job(task=task, eval_size=10)
    x, y = job.evaluation
    with torch.no_grad():
        whole = task_loss(task, job.model.eval()(x), y).item()
    assert evaluate_synthetic(job.model, task, x, y, chunk=3) == pytest.approx(whole, rel=1e-6)


def test_a_short_run_learns_the_adding_problem():
    """T = 12. A zero output scores E[y^2] = 7/6 and the mean 1 scores Var(y) = 1/6; 40 steps get
    from the initial guess to about the mean's score."""
    torch.manual_seed(0)
    model = create("tcn", in_channels=2, out_channels=1, hidden=8, levels=3, kernel_size=3)
    config = SequenceTrainConfig(task="adding", steps=40, batch_size=32, length=12, lr=1e-2, log_every=20,
                                 eval_size=256, seed=0)
    held_out = SequenceJob(config, create("tcn", in_channels=2, out_channels=1)).evaluation
    before = evaluate_synthetic(model, "adding", *held_out)
    history, optimizer = train_sequence(model, config)
    assert [row["step"] for row in history] == [20, 40]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    after = evaluate_synthetic(model, "adding", *held_out)
    assert history[-1]["eval_loss"] == pytest.approx(after, rel=1e-6)  # scored on the held-out batch
    assert after < 0.25 * before and after < 0.25
    assert not model.training and optimizer.param_groups[0]["lr"] == 1e-2
