"""Batches for training, prepared ahead of the step so that data never stalls it.

:func:`batch_stream` turns a map-style dataset and an epoch's index order into collated batches.
A batch is prepared while the previous step runs: in a background thread of this process
(``workers=0``) or in worker processes (``workers > 0``, as a PyTorch ``DataLoader``). Either way
the batches are exactly ``default_collate([dataset[i] for i in chunk])``, in order, and this
process's torch and NumPy global random states are left alone. See ``docs/data_loading.md`` for the
measurements behind the choice.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

_AHEAD = 2  # batches prepared ahead of the consumer: one being consumed may wait on one being prepared
_POLL_S = 0.05  # how often a blocked producer looks whether the consumer has gone


def batch_stream(
    dataset: Dataset, indices: Sequence[int], batch_size: int, *, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, masks) batches (torch default collate of dataset[i]) for consecutive chunks of `indices`, dropping a last partial chunk.

    Batches are prepared ahead of the consumer; ``close()`` the iterator (or exhaust it) to stop
    that work: closing, an exception or ``KeyboardInterrupt`` in the consumer's loop stops the
    background thread or worker processes before the exception propagates. Wrap the iterator in
    ``contextlib.closing`` when a reference to it may outlive the loop.

    Args:
        dataset: any map-style dataset; ``dataset[i]`` must depend on ``i`` alone (reseed any
            augmentation per index), since items are prepared out of order of the consumer's steps.
        indices: the epoch's order of items.
        batch_size: items per batch.
        workers: worker processes; 0 prepares batches in one background thread of this process.

    Yields:
        ``default_collate`` of each chunk: for segmentation datasets ``images (B, 3, H, W)`` and
        ``masks (B, H, W)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    chunks = [list(indices[start : start + batch_size]) for start in range(0, len(indices) - batch_size + 1, batch_size)]
    if workers == 0:
        return _thread_stream(dataset, chunks)
    return _process_stream(dataset, chunks, workers)


def _thread_stream(dataset: Dataset, chunks: list[list[int]]) -> Iterator[Any]:
    ready: queue.Queue = queue.Queue(maxsize=_AHEAD)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(dataset, chunks, ready, stop), name="atrous-batch-stream",
                                daemon=True)
    producer.start()
    try:
        for _ in chunks:
            kind, value = ready.get()
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        producer.join()


def _produce(dataset: Dataset, chunks: list[list[int]], ready: queue.Queue, stop: threading.Event) -> None:
    try:
        for chunk in chunks:
            items = []
            for index in chunk:
                if stop.is_set():
                    return
                items.append(dataset[index])
            message = ("batch", default_collate(items))
            while not _offer(ready, message, stop):
                if stop.is_set():
                    return
    except BaseException as error:  # noqa: BLE001 (handed to the consumer, who raises it)
        _offer_until_stopped(ready, ("error", error), stop)


def _offer(ready: queue.Queue, message: tuple[str, Any], stop: threading.Event) -> bool:
    try:
        ready.put(message, timeout=_POLL_S)
        return True
    except queue.Full:
        return False


def _offer_until_stopped(ready: queue.Queue, message: tuple[str, Any], stop: threading.Event) -> None:
    while not stop.is_set() and not _offer(ready, message, stop):
        pass


def _process_stream(dataset: Dataset, chunks: list[list[int]], workers: int) -> Iterator[Any]:
    if not chunks:
        return
    # A private generator: the DataLoader draws its workers' base seed from it, not from torch's global one.
    loader = DataLoader(dataset, batch_sampler=chunks, num_workers=workers, generator=torch.Generator(),
                        prefetch_factor=_AHEAD)
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        # DataLoader has no public close; this is what its iterator's __del__ calls, done now.
        iterator._shutdown_workers()
