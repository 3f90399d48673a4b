"""Fine-tuning: frozen BatchNorm, a slower backbone, the auxiliary loss, a weights file to start from.

Oracles: the weights before the steps (frozen BatchNorm), SGD's update computed from autograd's
gradients (the backbone's rate), ``F.cross_entropy`` of each head (the auxiliary loss), the file
itself (weights at step 0) and an uninterrupted run (resume).
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import SEGMENTATION, create_tiny
from torch import nn

from atrous.engine.checkpoint import read_checkpoint_meta
from atrous.engine.config import CONFIG_VERSION, DEFAULT_AUX_WEIGHT, TrainConfig
from atrous.engine.distributed import DistributedContext
from atrous.engine.finetune import backbone_prefix, build_optimizer
from atrous.engine.preprocess import normalize
from atrous.engine.run_dir import newest_checkpoint
from atrous.engine.trainer import SegmentationJob, poly_lr, train, train_step
from atrous.models import create

pytestmark = pytest.mark.filterwarnings("ignore::atrous.models.RateWarning")  # ASPP on tiny inputs

RUN = {"model": "deeplabv3_resnet18", "model_kwargs": {"width_multiplier": SEGMENTATION["width_multiplier"]}, "train_images": 8,
       "val_images": 2, "batch_size": 4, "epochs": 2, "crop_size": 64, "device": "cpu"}


def batch(seed: int = 0, classes: int = SEGMENTATION["num_classes"]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 32, 32, generator=generator)
    masks = torch.randint(0, classes, (2, 32, 32), generator=generator)
    masks[:, :4] = 255  # ignored
    return images, masks


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for key, value in {**dict(module.named_parameters(recurse=False)),
                               **dict(module.named_buffers(recurse=False))}.items()}


def job(**overrides) -> SegmentationJob:
    return SegmentationJob(TrainConfig(**{**RUN, **overrides}), DistributedContext())


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_leaves_running_statistics_and_affine_parameters_untouched(freeze):
    trainer = job(freeze_bn=freeze)
    before, weights = batchnorm_state(trainer.model), copy.deepcopy(trainer.model.state_dict())
    assert before and any(key.endswith("running_mean") for key in before)
    for step, items in enumerate(trainer.batches(0, 0)):
        trainer.step(items, step)
        if step == 0:
            trainer.evaluate()  # evaluation puts the model back in training mode; the next step must refreeze
    after = batchnorm_state(trainer.model)
    unchanged = [key for key in before if torch.equal(before[key], after[key])]
    if freeze:
        assert unchanged == list(before)
        frozen = {id(p) for m in trainer.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  for p in m.parameters(recurse=False)}
        assert not frozen & {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    else:  # the control: the same steps do move the statistics
        assert not any(key.endswith(("running_mean", "running_var")) for key in unchanged)
    convs = [key for key in weights if key.endswith("conv1.weight")]
    assert convs and all(not torch.equal(weights[key], trainer.model.state_dict()[key]) for key in convs)


@pytest.mark.parametrize(("name", "prefix"), [("deeplabv3_resnet18", "backbone."),
                                              ("deeplabv3plus_resnet18", "features.body.")])
def test_the_backbone_steps_at_its_scale_of_the_rate(name, prefix):
    scale, lr = 0.1, 0.05
    config = TrainConfig(model=name, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=lr, backbone_lr_scale=scale)
    model = create_tiny(name)
    assert backbone_prefix(model) == prefix
    optimizer = build_optimizer(config, model)
    assert [g["lr"] for g in optimizer.param_groups] == [lr * scale, lr]
    images, masks = batch()
    reference = copy.deepcopy(model)
    named = list(reference.named_parameters())
    torch.manual_seed(5)  # the same dropout in both forwards
    loss = F.cross_entropy(reference(normalize(images)), masks, ignore_index=255)
    grads = dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named])))
    rate = poly_lr(config, 3, 10)
    torch.manual_seed(5)
    train_step(model, optimizer, images, masks, rate)
    assert [g["lr"] for g in optimizer.param_groups] == [rate * scale, rate]  # the schedule scales both groups
    after = dict(model.named_parameters())
    moved = {True: 0, False: 0}
    for key, parameter in named:
        in_backbone = key.startswith(prefix)
        expected = parameter.detach() - rate * (scale if in_backbone else 1.0) * grads[key]
        torch.testing.assert_close(after[key].detach(), expected, rtol=1e-5, atol=1e-7, msg=key)
        moved[in_backbone] += bool(grads[key].abs().max() > 0)
    assert moved[True] and moved[False]


def test_a_backbone_rate_for_a_model_without_a_backbone_is_refused():
    with pytest.raises(ValueError, match=r"backbone_lr_scale.*context_net has none"):
        build_optimizer(TrainConfig(backbone_lr_scale=0.1), create("context_net", num_classes=3, width_multiplier=0.25))
    one = build_optimizer(TrainConfig(), create_tiny("deeplabv3_resnet18"))  # scale 1: one group, as every run before
    assert len(one.param_groups) == 1 and "lr_scale" not in one.param_groups[0]


@pytest.mark.parametrize(("aux_weight", "background_weight"), [(None, 1.0), (0.25, 0.3)])
def test_the_aux_loss_is_the_main_loss_plus_the_weighted_aux_loss(aux_weight, background_weight):
    model = create_tiny("deeplabv3_resnet18", aux_loss=True).train()
    images, masks = batch(1)
    reference = copy.deepcopy(model)
    torch.manual_seed(7)
    outputs = reference(normalize(images))
    assert set(outputs) == {"out", "aux"}
    weight = torch.tensor([background_weight, 1.0, 1.0])
    main, aux = (F.cross_entropy(outputs[key], masks, weight=weight, ignore_index=255) for key in ("out", "aux"))
    expected = main + (0.5 if aux_weight is None else aux_weight) * aux
    config = TrainConfig(model="deeplabv3_resnet18", aux_weight=aux_weight, background_weight=background_weight)
    torch.manual_seed(7)
    loss = train_step(model, build_optimizer(config, model), images, masks, 1e-3, None, background_weight,
                      aux_weight=config.aux_loss_weight)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert isinstance(model.eval()(normalize(images)), torch.Tensor)  # evaluation sees the logits alone


def test_an_aux_weight_for_a_model_without_an_aux_head_is_refused_before_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"aux_weight \(--aux-weight\) 0.4 .*aux_loss=True"):
        train(TrainConfig(**{**RUN, "aux_weight": 0.4}), tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_a_run_from_a_weights_file_starts_with_its_weights_and_resumes_without_it(tmp_path, monkeypatch):
    from atrous.engine import trainer

    torch.manual_seed(123)  # other weights than the run's own seed would draw
    source = create_tiny("deeplabv3_resnet18", num_classes=11)
    file = tmp_path / "start.pth"
    torch.save(source.state_dict(), file)
    seen, real = [], trainer.train_step

    def first_step(model, *args, **kwargs):
        if not seen:
            seen.append(copy.deepcopy(model.state_dict()))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", first_step)
    lines = []
    train(TrainConfig(**{**RUN, "epochs": 1, "weights": str(file)}), tmp_path / "run", progress=False,
          log=lines.append)
    expected = source.state_dict()
    assert seen[0].keys() == expected.keys()
    for key in expected:
        assert torch.equal(seen[0][key], expected[key]), key
    assert f"started from weights {file}" in lines[0] and f"from {str(file)!r}" in lines[1]  # describe, report
    assert json.loads((tmp_path / "run" / "config.json").read_text())["weights"] == str(file)
    file.unlink()  # a resume restores its own checkpoint and reads no weights file
    train(None, tmp_path / "run", resume=True, epochs=2, progress=False, log=lambda _: None)
    assert read_checkpoint_meta(newest_checkpoint(tmp_path / "run"))["meta"]["loop"]["epoch"] == 2


def test_backbone_weights_reach_the_backbone_alone(tmp_path):
    classifier = create_tiny("resnet18")
    state = {**classifier.state_dict(), "fc.weight": torch.zeros(10, 32), "fc.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "imagenet.pth")
    model = job(backbone_weights=str(tmp_path / "imagenet.pth")).model
    for key, value in classifier.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


@pytest.mark.parametrize(("values", "pattern"), [
    ({"weights": 3}, "weights must be a file path"), ({"backbone_weights": " "}, "backbone_weights must name"),
    ({"weights": "a.pth", "backbone_weights": "b.pth"}, "weights and backbone_weights: give one"),
    ({"model_kwargs": {"weights": "a.pth"}}, "model_kwargs must not hold 'weights'"),
    ({"freeze_bn": 1}, "freeze_bn must be True or False"),
])
def test_bad_finetuning_fields_name_themselves(values, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        TrainConfig(**values)


def test_a_missing_weights_file_is_refused_before_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights .*missing.pth'?: no such file"):
        train(TrainConfig(**{**RUN, "weights": str(tmp_path / "missing.pth")}), tmp_path / "run", progress=False,
              log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_runs_saved_before_fine_tuning_train_as_they_did():
    old = {k: v for k, v in TrainConfig().to_dict().items()
           if k not in ("weights", "backbone_weights", "freeze_bn", "backbone_lr_scale", "aux_weight")}
    config = TrainConfig.from_dict(old)
    assert (config.weights, config.backbone_weights, config.freeze_bn, config.backbone_lr_scale) == \
        (None, None, False, 1.0)
    assert config.aux_weight is None and config.aux_loss_weight == DEFAULT_AUX_WEIGHT == 0.5
    assert config.config_version == CONFIG_VERSION
    tuned = TrainConfig(weights="w.pth", freeze_bn=True, backbone_lr_scale=0.1, aux_weight=0.4)
    assert TrainConfig.from_dict(tuned.to_dict()) == tuned


def test_resume_with_two_parameter_groups_ends_bit_identical(tmp_path, crash_after_save):
    from atrous.engine.loop import CheckpointEvery

    settings = {**RUN, "model_kwargs": {"width_multiplier": 1 / 16, "aux_loss": True}, "optimizer": "sgd",
                "backbone_lr_scale": 0.1, "freeze_bn": True, "aux_weight": 0.4}
    quiet = {"progress": False, "log": lambda _: None}
    train(TrainConfig(**settings), tmp_path / "straight", **quiet)
    with crash_after_save(2):  # a crash right after the second save, mid-epoch 1
        train(TrainConfig(**settings), tmp_path / "split", every=CheckpointEvery(steps=1), **quiet)
    groups = read_checkpoint_meta(newest_checkpoint(tmp_path / "split"))["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]
    torch.manual_seed(999)  # a fresh process would start from some other RNG state
    train(None, tmp_path / "split", resume=True, **quiet)
    from safetensors.torch import load_file

    for name in ("model.safetensors", "optimizer.safetensors"):
        straight = load_file(str(newest_checkpoint(tmp_path / "straight") / name))
        resumed = load_file(str(newest_checkpoint(tmp_path / "split") / name))
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (name, key)
