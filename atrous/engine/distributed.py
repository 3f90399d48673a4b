"""Process-group plumbing for ``torchrun``: gloo on CPU, nccl on GPU, rank 0 writes.

Under ``torchrun --nproc_per_node=N -m atrous train ...`` every process trains on its shard
of each batch through DistributedDataParallel; gradients are averaged, so one step on
N x B/N samples equals one step on B samples in one process (without batch-statistics
layers, whose statistics are per process unless converted to SyncBatchNorm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size``, and the device it uses."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} asked for CUDA but no CUDA device is available")
    return resolved


def setup(device: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(device=resolved)
    rank = int(os.environ["RANK"])
    if resolved.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        resolved = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=resolved)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes (a no-op when running alone)."""
    if context.enabled:
        # NCCL reduces only CUDA tensors; gloo takes CPU ones.
        on_device = tensor.to(context.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        tensor.copy_(on_device)
    return tensor


def broadcast_object(value, context: DistributedContext):
    """Rank 0's ``value`` on every process."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(context: DistributedContext) -> None:
    """Wait for every process (a no-op when running alone)."""
    if context.enabled:
        dist.barrier()


def teardown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
