"""Batches for training: drawn in the consumer's thread when the step fills the CPU, else ahead in workers.

:func:`batch_stream` turns a map-style dataset and an epoch's order of indices into collated
batches, exactly ``default_collate([dataset[i] for i in chunk])`` in order. Where the batches are
drawn is a matter of where CPU is left over. When torch's threads already occupy every core
this process may use (CPU training), a worker drawing alongside the step takes its CPU from the
step (one of its threads stalls, and the rest wait for it), and a batch coming from another
process costs a shared-memory copy on top; drawing between steps costs the least. When CPU is
left over (more cores than torch threads, or a GPU doing the step), PyTorch ``DataLoader`` workers
draw ahead. A thread is never used: drawing (many small NumPy calls) would hold the GIL the step's
Python needs. The measurements are in ``docs/data_loading.md``.
"""

from __future__ import annotations

import contextlib
import operator
import os
import random
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from atrous._checks import check_int

_AHEAD = 2  # batches each worker prepares ahead: one consumed while the next one is drawn


def batch_stream(
    dataset: Dataset, indices: Sequence[int], batch_size: int, *, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, masks) batches (torch default collate of dataset[i]) for consecutive chunks of
    `indices`, dropping a last partial chunk.

    ``workers=n`` draws in ``n`` worker processes. ``workers=0`` draws in the consumer's thread,
    between steps, when torch's intra-op threads occupy every core this process may use and no
    GPU is in use, and otherwise in one worker process. Either way this process's global torch,
    NumPy and ``random`` states are left as they were: in this thread the dataset sees global
    generators of its own, seeded once.

    Workers start when the first batch is asked for and stop when the iterator is exhausted or
    closed: ``close()``, or the iterator being dropped after an exception (``KeyboardInterrupt``
    included) in the consumer's loop. Wrap it in ``contextlib.closing`` when a reference may
    outlive the loop. Workers ignore SIGINT: Ctrl-C reaches the consumer, which decides when to
    stop. An exception in ``dataset[i]`` is raised in the consumer (from a worker as
    ``DataLoader`` does: the same type where it can be rebuilt from a message, with the worker's
    traceback in the message).

    Args:
        dataset: a map-style dataset; ``dataset[i]`` must be a function of ``i`` alone (reseed any
            augmentation per index), as workers draw items in their own processes.
        indices: the items, in the order they are batched; any ints the dataset accepts.
        batch_size: items per batch.
        workers: worker processes; 0 decides (see above).

    Yields:
        ``default_collate`` of each chunk; for segmentation datasets ``images (B, 3, H, W)``
        float32 and ``masks (B, H, W)`` int64.
    """
    check_int(batch_size, "batch_size", low=1)
    check_int(workers, "workers", low=0)
    try:
        keys = [operator.index(index) for index in indices]
    except TypeError:
        raise TypeError(f"indices must be a sequence of ints, got {type(indices).__name__} {indices!r:.60}") from None
    chunks = [keys[start : start + batch_size] for start in range(0, len(keys) - batch_size + 1, batch_size)]
    if workers == 0 and not spare_cpu():
        return _in_this_thread(dataset, chunks)
    return _in_workers(dataset, chunks, max(workers, 1))


def spare_cpu() -> bool:
    """Whether the training step leaves CPU over for a worker: a GPU is in use, or this process
    may use more cores than torch's intra-op threads."""
    if torch.cuda.is_initialized():
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


def _in_this_thread(dataset: Dataset, chunks: list[list[int]]) -> Iterator[Any]:
    own_random = _GlobalRandom(seed=0)
    for chunk in chunks:
        with own_random.active():
            items = [dataset[index] for index in chunk]
        yield default_collate(items)


class _GlobalRandom:
    """States of the global torch, NumPy and ``random`` generators that a dataset draws from while
    :meth:`active`, kept apart from this process's (which are put back after)."""

    def __init__(self, seed: int):
        self.states = (torch.Generator().manual_seed(seed).get_state(), np.random.RandomState(seed).get_state(),
                       random.Random(seed).getstate())

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = _global_states()
        _set_global_states(self.states)
        try:
            yield
        finally:
            self.states = _global_states()
            _set_global_states(outer)


def _global_states() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_global_states(states: tuple[Any, Any, Any]) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


def _in_workers(dataset: Dataset, chunks: list[list[int]], workers: int) -> Iterator[Any]:
    if not chunks:
        return
    # A generator of its own: the DataLoader draws its workers' base seed from it, not from torch's global one.
    loader = DataLoader(dataset, batch_sampler=chunks, num_workers=workers, prefetch_factor=_AHEAD,
                        generator=torch.Generator(), worker_init_fn=_ignore_interrupts)
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        # DataLoader has no public close; its iterator's __del__ calls this, which a traceback
        # holding the iterator would delay.
        iterator._shutdown_workers()


def _ignore_interrupts(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
