"""Data parallelism: one step on 2 processes x B/2 equals one step on 1 process x B."""

import json
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler

from atrous import DilatedConv2d
from atrous.engine.distributed import DistributedContext
from atrous.engine.trainer import train_step, wrap_for_distributed


def _model() -> nn.Module:
    # No batch statistics: those are per process on CPU, where PyTorch has no SyncBatchNorm.
    torch.manual_seed(0)
    return nn.Sequential(DilatedConv2d(3, 8, 3, dilation=2), nn.ReLU(), DilatedConv2d(8, 5, 3, dilation=4))


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 12, 12, generator=generator), torch.randint(0, 5, (4, 12, 12), generator=generator)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    # A file store, not a TCP port: nothing another test could grab between processes.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    context = DistributedContext(rank=rank, world_size=2)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    images, masks = _batch()
    shard = list(DistributedSampler(range(4), num_replicas=2, rank=rank, shuffle=False))
    train_step(wrap_for_distributed(model, context), optimizer, images[shard], masks[shard], lr=0.5)
    if rank == 0:
        torch.save(model.state_dict(), out)
    # Tear down together: gloo aborts ("terminate called without an active exception") when a
    # process destroys the group while its peer is still inside a collective.
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.start_processes(_worker, args=(str(tmp_path / "store"), out), nprocs=2, start_method="spawn")
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    train_step(model, optimizer, *_batch(), lr=0.5)
    ddp_state = torch.load(out)
    changed = False
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[key], value, rtol=1e-5, atol=1e-6)
        changed |= not torch.equal(value, _model().state_dict()[key])
    assert changed  # the step really moved the weights


def test_epoch_shards_partition_each_epoch_like_distributed_sampler():
    from atrous.engine.config import TrainConfig
    from atrous.engine.trainer import epoch_order

    config = TrainConfig(batch_size=4, seed=3)
    shards = []
    for rank in range(2):
        order = epoch_order(12, config, DistributedContext(rank=rank, world_size=2), epoch=4)
        sampler = torch.utils.data.DistributedSampler(range(12), 2, rank, shuffle=True, seed=3)
        sampler.set_epoch(4)
        assert order == list(sampler)  # the same shards as torch's own sampler
        shards.append(order)
    assert sorted(shards[0] + shards[1]) == list(range(12))
    alone = epoch_order(12, config, DistributedContext(), epoch=4)
    assert sorted(alone) == list(range(12)) and alone != epoch_order(12, config, DistributedContext(), epoch=5)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        epoch_order(12, config, DistributedContext(rank=0, world_size=3), epoch=0)


@pytest.mark.slow
def test_torchrun_trains_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
        "-m", "atrous", "train", "--epochs", "1", "--out", str(out), "--device", "cpu",
        "--model-arg", "width_multiplier=0.25", "--train-images", "8", "--val-images", "4", "--batch-size", "4",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # torchrun's own summary comes last; the workers' errors are above it.
    assert done.returncode == 0, done.stderr[-8000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    assert done.stdout.count("epoch 1/1") == 1  # printed once, by rank 0
