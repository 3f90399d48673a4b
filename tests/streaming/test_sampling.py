"""Autoregressive sampling through the streamer equals sampling by full recomputation."""

import pytest
import torch

from atrous.models import create
from atrous.streaming import sample_autoregressive


def test_greedy_streamed_sampling_equals_offline_recomputation():
    torch.manual_seed(0)
    model = create("wavenet", classes=16, blocks=2, layers=3, residual_channels=4, gate_channels=6,
                   skip_channels=5, global_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)  # large random weights, so greedy paths wander instead of settling
    speakers = torch.tensor([0, 1, 2])
    got = sample_autoregressive(model, 25, batch_size=3, temperature=0.0, global_condition=speakers)
    # reference: feed the whole prefix every step and take the argmax of the last output
    ids = torch.full((3, 1), 8)
    for _ in range(25):
        logits = model(ids, global_condition=speakers)[:, :, -1]
        ids = torch.cat([ids, logits.argmax(dim=1, keepdim=True)], dim=1)
    assert torch.equal(got, ids[:, 1:])
    assert not torch.equal(got[0], got[1])  # the speakers really differ
    assert len(torch.unique(got)) > 3  # and the paths are not constant


def test_sampling_is_reproducible_and_reports_progress():
    torch.manual_seed(0)
    model = create("wavenet", classes=8, blocks=1, layers=2, residual_channels=2, gate_channels=2, skip_channels=2)
    done = []
    a = sample_autoregressive(model, 12, batch_size=2, generator=torch.Generator().manual_seed(5), progress=done.append)
    b = sample_autoregressive(model, 12, batch_size=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (2, 12) and a.min() >= 0 and a.max() < 8
    assert sum(done) == 12
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        sample_autoregressive(model, 0)


def test_fused_and_plain_streamers_draw_the_same_samples():
    torch.manual_seed(0)
    model = create("wavenet", classes=16, blocks=2, layers=3, residual_channels=4, gate_channels=6,
                   skip_channels=5, local_channels=2).eval()
    local = torch.randn(2, 2, 30)
    draws = [
        sample_autoregressive(model, 30, batch_size=2, local_condition=local, fused=fused,
                              generator=torch.Generator().manual_seed(3))
        for fused in (True, False)
    ]
    assert torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match=r"cannot fuse"):
        sample_autoregressive(torch.nn.Sequential(torch.nn.LSTM(2, 2)), 3, fused=True, classes=2)


@pytest.mark.parametrize("fused", [True, False])
def test_sampling_runs_in_eval_mode_and_gives_each_module_its_mode_back(fused):
    torch.manual_seed(0)
    model = create("wavenet", classes=8, blocks=1, layers=2, residual_channels=2, gate_channels=2, skip_channels=2)
    model.head.eval()  # a mixed model: every module must get its own mode back
    modes = {name: module.training for name, module in model.named_modules()}
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    sample_autoregressive(model, 4, fused=fused)
    # the fused step never calls the model's forward; the plain one calls it at every step (and on
    # the examples it traces the model with when it is built), always in eval mode
    assert seen == [] if fused else (len(seen) >= 4 and not any(seen))
    assert {name: module.training for name, module in model.named_modules()} == modes
    with pytest.raises(ValueError, match=r"global_condition"):  # raised inside the sampling loop
        sample_autoregressive(model, 3, global_condition=torch.tensor([0]), fused=fused)
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_the_number_of_classes_comes_from_the_model_or_the_argument():
    torch.manual_seed(0)
    model = create("wavenet", classes=8, blocks=1, layers=2, residual_channels=2, gate_channels=2, skip_channels=2)
    got = sample_autoregressive(model, 5, temperature=0.0)
    assert torch.equal(got, sample_autoregressive(model, 5, temperature=0.0, classes=8))
    assert torch.equal(got, sample_autoregressive(model, 5, temperature=0.0, first=4))  # default: classes // 2
    with pytest.raises(ValueError, match=r"first must be a class id in \[0, 8\), got 8"):
        sample_autoregressive(model, 5, first=8)
    with pytest.raises(ValueError, match=r"predicts 8 classes per step but takes classes=16"):
        sample_autoregressive(model, 5, classes=16, first=3)
    with pytest.raises(ValueError, match=r"classes must be an int >= 1, got 0"):
        sample_autoregressive(model, 5, classes=0)
    stack = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match=r"classes must be given for a Sequential.*in_channels"):
        sample_autoregressive(stack, 5)


def test_a_model_that_changes_the_rate_cannot_be_sampled():
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 2, stride=2)).eval()  # one output per two inputs
    with pytest.raises(ValueError, match=r"one output per input sample at once; this one gives 1/2"):
        sample_autoregressive(model, 3, classes=4)
