"""Training runs: exact resume, run-folder protection, the files a run leaves."""

import json

import numpy as np
import pytest
import torch

from atrous.engine.checkpoint import load_checkpoint
from atrous.engine.config import TrainConfig
from atrous.engine.run_dir import newest_checkpoint
from atrous.engine.trainer import poly_lr, segmentation_loss, train


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        model="context_net",
        model_kwargs={"width_multiplier": 0.25},
        train_images=8,
        val_images=4,
        batch_size=4,
        epochs=2,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def _weights(path):
    from atrous.models import create

    model = create("context_net", num_classes=11, width_multiplier=0.25)
    load_checkpoint(path, model)
    return model.state_dict()


def test_resume_continues_exactly(tmp_path, crash_after_save):
    from atrous.engine.loop import CheckpointEvery

    train(tiny_config(), tmp_path / "straight", progress=False)
    with crash_after_save(2):  # the second run dies right after its second save (mid-epoch 1)
        train(tiny_config(), tmp_path / "split", progress=False, every=CheckpointEvery(steps=1))
    torch.manual_seed(999)  # a fresh process would start from some other RNG state
    result = train(tiny_config(), tmp_path / "split", resume=True, progress=False)
    assert [row["epoch"] for row in result["history"]] == [1, 2]
    straight = _weights(tmp_path / "straight" / "checkpoints" / "last-000003")
    resumed = _weights(newest_checkpoint(tmp_path / "split"))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    metrics = json.loads((tmp_path / "split" / "metrics.json").read_text())
    first = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert [r["train_loss"] for r in metrics["history"]] == [r["train_loss"] for r in first["history"]]


def test_run_leaves_metrics_curves_and_checkpoints(tmp_path):
    train(tiny_config(epochs=1), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("metrics.json", "metrics.csv", "curves.png", "config.json", "checkpoints/last-000002/model.safetensors",
                 "checkpoints/last-000002/optimizer.safetensors", "checkpoints/best-000001/model.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["last"]["val_miou"] <= 1.0
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss,val_miou")


def test_existing_run_is_never_overwritten_silently(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        train(tiny_config(epochs=1), run, progress=False)
    with pytest.raises(ValueError, match="not an atrous run folder"):
        train(tiny_config(epochs=1), run, overwrite=True, progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="cannot resume .* not an atrous run folder"):
        train(tiny_config(epochs=1), run, resume=True, progress=False)


def test_poly_schedule_closed_form():
    config = tiny_config(lr=0.1, poly_power=0.9)
    assert poly_lr(config, 0, 100) == pytest.approx(0.1)
    assert poly_lr(config, 50, 100) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(config, 100, 100) == 0.0


@pytest.mark.parametrize("background_weight", [1.0, 0.3])
def test_background_weight_matches_numpy_weighted_cross_entropy(background_weight):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator, dtype=torch.float64)
    masks = torch.randint(0, 4, (2, 5, 6), generator=generator)
    masks[0, 0, :3] = 255
    z = logits.permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    labels = masks.reshape(-1).numpy()
    keep = labels != 255
    z, labels = z[keep], labels[keep]
    log_softmax = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    weights = np.where(labels == 0, background_weight, 1.0)
    expected = -(weights * log_softmax[np.arange(len(labels)), labels]).sum() / weights.sum()
    assert segmentation_loss(logits, masks, background_weight).item() == pytest.approx(expected, rel=1e-12)


def test_train_defaults_weight_background_down_on_digits_only(tmp_path):
    from atrous.cli.main import build_parser
    from atrous.cli.train import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train"])).background_weight < 1
    (tmp_path / "train" / "images").mkdir(parents=True)
    assert config_from_args(parser.parse_args(["train", "--data", str(tmp_path)])).background_weight == 1.0
    args = parser.parse_args(["train", "--background-weight", "0.5"])
    assert config_from_args(args).background_weight == 0.5


def test_unknown_model_is_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown segmentation model 'nope'"):
        train(tiny_config(model="nope"), tmp_path / "run", progress=False)


def test_a_batch_larger_than_the_data_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        train(tiny_config(batch_size=16), tmp_path / "run", progress=False)


def test_bf16_step_tracks_the_float32_step():
    # One step of the same model on the same batch: the bf16-autocast forward gives the float32 loss
    # to bf16 accuracy, gradients and weights stay float32, and the update moves the same way.
    from atrous.engine.trainer import autocast_dtype, train_step
    from atrous.models import create

    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=generator)
    masks = torch.randint(0, 11, (2, 32, 32), generator=generator)
    results = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = create("context_net", num_classes=11, width_multiplier=0.25)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        logits = []
        model.register_forward_hook(lambda module, inputs, output: logits.append(output.dtype))
        loss = train_step(model, optimizer, images, masks, lr=0.1, autocast=dtype)
        assert logits == [dtype or torch.float32]  # the forward really ran in the asked dtype
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        results[dtype] = loss, torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    (loss32, step32), (loss16, step16) = results[None], results[torch.bfloat16]
    assert abs(loss16 - loss32) < 0.02 * loss32
    assert torch.nn.functional.cosine_similarity(step16, step32, dim=0) > 0.98


def test_version_1_runs_of_context_net_load_and_resume(tmp_path):
    # A run saved before config_version existed: context_net's decoder was C/4 and C/2 wide then,
    # AdamW ran at 3e-3 and background was not weighted. Its checkpoints must still load and resume.
    from atrous.engine.predict import load_trained_model

    old_widths = {"width_multiplier": 0.25, "skip_channels": 6, "fuse_channels": 12}  # C = 24
    run = tmp_path / "old"
    train(tiny_config(model_kwargs=old_widths, epochs=1, lr=3e-3), run, progress=False)
    for path in run.rglob("*.json"):
        text = json.loads(path.read_text())
        for holder in (text, text.get("meta", {}), text.get("config", {}), text.get("meta", {}).get("config", {})):
            holder.pop("config_version", None)
            holder.pop("background_weight", None)
            if holder.get("lr") == 3e-3:
                holder["lr"] = None
            if "model_kwargs" in holder:
                holder["model_kwargs"] = {"width_multiplier": 0.25}
        path.write_text(json.dumps(text))
    model, meta = load_trained_model(run)
    assert model.skip[0].out_channels == 6 and model.fuse[0].out_channels == 12
    assert "config_version" not in meta["config"]
    result = train(tiny_config(), run, resume=True, epochs=2, progress=False)
    assert [row["epoch"] for row in result["history"]] == [1, 2]
