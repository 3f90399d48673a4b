"""The PyTorch executor (atrous/streaming/executor.py) run on a lowered program, chunk by chunk
with its own rings, must give the offline forward; its rings must hold each causal layer's last
inputs as the offline forward saw them."""

import pytest
import torch
from torch import nn

from atrous.models import create
from atrous.ops.layers import CausalConv1d
from atrous.streaming.executor import TorchExecutor
from atrous.streaming.program import lower


class Run:
    """A program, its rings and workspace, and the executor over them."""

    def __init__(self, model: nn.Module, batch: int) -> None:
        self.program = program = lower(model)
        self.rings = [torch.zeros(context, batch, channels) for context, channels in program.rings]
        self.work = torch.zeros(batch, program.width)
        self.executor = TorchExecutor(program, self.rings, self.work)
        self.time = 0

    def feed(self, chunk: torch.Tensor, *, local: torch.Tensor | None = None,
             global_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty(chunk.shape[0], self.program.output.width, chunk.shape[-1])
        self.executor.run(chunk, local, global_ids, out, self.time)
        self.time += chunk.shape[-1]
        return out


def chunks(total: int, seed: int, longest: int = 9) -> list[tuple[int, int]]:
    """Random ``(start, stop)`` chunks covering ``[0, total)``, single samples included."""
    generator, bounds, start = torch.Generator().manual_seed(seed), [], 0
    while start < total:
        stop = min(total, start + int(torch.randint(1, longest + 1, (1,), generator=generator)))
        bounds.append((start, stop))
        start = stop
    return bounds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_causal_stack_runs_chunk_by_chunk_like_offline(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(CausalConv1d(3, 4, 3, dilation=2), nn.GELU(), nn.Conv1d(4, 4, 1), nn.Tanh(),
                          CausalConv1d(4, 4, 2, dilation=5, groups=2), nn.Sigmoid(), CausalConv1d(4, 2, 4)).eval()
    x = torch.randn(3, 3, 120)  # 120 steps: every ring wraps many times
    run = Run(model, 3)
    got = torch.cat([run.feed(x[:, :, start:stop]) for start, stop in chunks(120, seed)], dim=2)
    torch.testing.assert_close(got, model(x), atol=1e-5, rtol=0)


def test_a_conditioned_wavenet_runs_like_offline():
    torch.manual_seed(0)
    model = create("wavenet", classes=16, blocks=2, layers=3, residual_channels=4, gate_channels=6, skip_channels=5,
                   global_classes=3, local_channels=2).eval()
    ids, speakers, local = torch.randint(0, 16, (2, 50)), torch.tensor([2, 1]), torch.randn(2, 2, 50)
    run = Run(model, 2)
    got = torch.cat([run.feed(ids[:, start:stop], local=local[:, :, start:stop], global_ids=speakers)
                     for start, stop in chunks(50, 3)], dim=2)
    with torch.no_grad():
        expected = model(ids, global_condition=speakers, local_condition=local)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_each_ring_holds_its_layers_last_inputs_at_their_time_slots():
    """Slot ``t mod (k - 1) d`` of a causal conv's ring holds that conv's input at time t."""
    torch.manual_seed(0)
    model = create("tcn", in_channels=2, out_channels=2, hidden=3, levels=3, kernel_size=3).eval()
    convs = [m for m in model.modules() if isinstance(m, CausalConv1d)]  # lowered in this order
    inputs = []
    hooks = [conv.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for conv in convs]
    x = torch.randn(2, 2, 37)
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    run = Run(model, 2)
    for start, stop in chunks(37, 5):
        run.feed(x[:, :, start:stop])
    assert len(run.rings) == len(convs)
    for ring, seen in zip(run.rings, inputs):  # ring (context, B, C); seen (B, C, T)
        context = ring.shape[0]
        for t in range(37 - context, 37):
            torch.testing.assert_close(ring[t % context], seen[:, :, t], atol=1e-5, rtol=0)


def test_it_works_in_place_on_the_buffers_it_was_given():
    torch.manual_seed(0)
    model = nn.Sequential(CausalConv1d(2, 2, 3, dilation=2)).eval()
    run = Run(model, 1)
    ring, work = run.rings[0].data_ptr(), run.work.data_ptr()
    run.feed(torch.randn(1, 2, 7))
    assert run.rings[0].data_ptr() == ring and run.work.data_ptr() == work
    assert run.rings[0].abs().sum() > 0  # the past went into the given ring


def test_out_of_range_ids_are_refused_before_anything_runs():
    model = create("wavenet", classes=8, blocks=1, layers=2, residual_channels=2, gate_channels=2, skip_channels=2,
                   global_classes=2).eval()
    run = Run(model, 2)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 8\), got values in \[0, 8\]"):
        run.feed(torch.tensor([[0, 8], [1, 2]]), global_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"global_condition ids must lie in \[0, 2\)"):
        run.feed(torch.tensor([[0], [1]]), global_ids=torch.tensor([0, -1]))
    assert all(ring.abs().sum() == 0 for ring in run.rings)
