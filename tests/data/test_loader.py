"""batch_stream: the naive collate bit for bit, in order; nothing left running; errors and RNG state.

Every property is checked for the three ways batches are drawn: in the consumer's thread and in
one worker (the two choices of ``workers=0``), and in two workers.

Also what makes digits cheap to feed: scenes drawn in a worker are cached for the whole run
(shared memory) up to a memory limit, ``fill_cache`` draws them all in parallel processes, and
the stroke patch equals the full-canvas drawing it replaced.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import random
import signal
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, default_collate

import atrous.data.digits as digits
import atrous.data.loader as loader
from atrous.data import DigitsScenes
from atrous.data.loader import batch_stream
from atrous.data.render import _windows


class Keyed(Dataset):
    """Item ``key`` (any int, as the trainer's (epoch, index) keys) from a generator seeded by the key."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, key: int):
        generator = torch.Generator().manual_seed(key)
        return torch.rand(3, 6, 5, generator=generator), torch.randint(0, 9, (6, 5), generator=generator)


class Fails(Keyed):
    def __getitem__(self, key: int):
        if key == 13:
            raise ValueError(f"item {key} is broken")
        return super().__getitem__(key)


class UsesGlobalRandom(Keyed):
    """Draws from every global generator, as augmentations without their own generator do."""

    def __getitem__(self, key: int):
        image, mask = super().__getitem__(key)
        return image + 0 * torch.rand(()) + 0 * float(np.random.rand()) + 0 * random.random(), mask


class Slow(Keyed):
    def __getitem__(self, key: int):
        time.sleep(0.02)
        return super().__getitem__(key)


class WorkerPid(Keyed):
    def __getitem__(self, key: int):
        return torch.tensor(os.getpid()), torch.tensor(key)


def naive(dataset, indices, batch_size):
    return [default_collate([dataset[i] for i in indices[k : k + batch_size]])
            for k in range(0, len(indices) - batch_size + 1, batch_size)]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (images, masks), (want_images, want_masks) in zip(got, expected):
        assert images.dtype == want_images.dtype and masks.dtype == want_masks.dtype
        assert torch.equal(images, want_images) and torch.equal(masks, want_masks)


def settled(threads: set[threading.Thread], timeout: float = 5.0) -> bool:
    """Whether, within ``timeout``, no child process and no thread beyond ``threads`` is alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not multiprocessing.active_children() and set(threading.enumerate()) <= threads:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(params=["this thread", "one worker", "two workers"])
def workers(request, monkeypatch) -> int:
    """The ``workers`` argument, with ``spare_cpu`` set so that 0 means this thread or one worker."""
    monkeypatch.setattr(loader, "spare_cpu", lambda: request.param != "this thread")
    return 2 if request.param == "two workers" else 0


def test_workers_0_draws_in_this_thread_only_when_the_step_fills_the_cores(monkeypatch):
    for spare, in_workers in ((False, False), (True, True)):
        monkeypatch.setattr(loader, "spare_cpu", lambda spare=spare: spare)
        assert [int(pid[0]) != os.getpid() for pid, _ in batch_stream(WorkerPid(), range(3), 1)] == [in_workers] * 3
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the conftest fixture puts it back
    monkeypatch.undo()
    assert not loader.spare_cpu()


def test_digits_batches_equal_the_naive_collate_in_order(workers):
    order = [17, 3, 3, 22, 0, 9, 11, 5, 23, 14, 8, 1, 2, 19]  # a repeat, and 2 left over
    streamed = list(batch_stream(DigitsScenes("train", size=32, num_images=24, seed=4), order, 4, workers=workers))
    expected = naive(DigitsScenes("train", size=32, num_images=24, seed=4, cache=False), order, 4)
    assert len(streamed) == 3  # 14 // 4: the last partial chunk is dropped
    assert_same_batches(streamed, expected)


def test_any_map_style_dataset_and_keys_past_its_length(workers):
    keys = np.array([40, 2, 7, 7, 31, 0, 12])  # NumPy ints are ints to the dataset
    streamed = list(batch_stream(Keyed(), keys, 2, workers=workers))
    assert_same_batches(streamed, naive(Keyed(), keys.tolist(), 2))
    assert list(batch_stream(Keyed(), [1, 2], 3, workers=workers)) == []


def test_global_random_state_of_this_process_is_untouched(workers):
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    assert len(list(batch_stream(UsesGlobalRandom(), range(12), 3, workers=workers))) == 4
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    assert random.getstate() == python_state


def test_closing_early_stops_the_workers_promptly(workers):
    threads = set(threading.enumerate())
    stream = batch_stream(Slow(), range(400), 4, workers=workers)
    next(stream)
    began = time.monotonic()
    stream.close()
    assert settled(threads) and time.monotonic() - began < 5


def test_an_interrupt_in_the_consumer_stops_the_workers(workers):
    threads = set(threading.enumerate())

    def consume():
        for _ in batch_stream(Slow(), range(400), 4, workers=workers):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        consume()
    assert settled(threads)


def test_an_error_in_an_item_reaches_the_consumer_with_its_message(workers):
    threads = set(threading.enumerate())
    got = []
    with pytest.raises(ValueError, match="item 13 is broken"):
        for batch in batch_stream(Fails(), [1, 2, 3, 4, 13, 5, 6, 7], 2, workers=workers):
            got.append(batch)
    assert len(got) == 2
    assert settled(threads)


def test_workers_leave_ctrl_c_to_the_consumer():
    with contextlib.closing(batch_stream(WorkerPid(), range(30), 1, workers=1)) as stream:
        pid, key = next(stream)
        os.kill(int(pid[0]), signal.SIGINT)
        time.sleep(0.2)
        assert [int(key[0]) for _, key in stream] == list(range(1, 30))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="batch_size"):
        batch_stream(Keyed(), [0, 1], 0)
    with pytest.raises(ValueError, match="workers"):
        batch_stream(Keyed(), [0, 1], 1, workers=-1)
    with pytest.raises(TypeError, match="indices"):
        batch_stream(Keyed(), [0.5, 1], 1)


def test_scenes_drawn_in_a_worker_are_cached_for_this_process():
    dataset = DigitsScenes("train", size=32, num_images=12, seed=2)
    list(batch_stream(dataset, range(8), 4, workers=1))
    fresh = DigitsScenes("train", size=32, num_images=12, seed=2, cache=False)
    for index in range(12):
        stored = dataset._store.get(index)
        assert (stored is not None) == (index < 8)  # drawn in the worker, never in this process
        if stored is not None:
            assert not stored[0].flags.writeable
            np.testing.assert_array_equal(stored[0], fresh.scene(index).image)
            np.testing.assert_array_equal(stored[1], fresh.scene(index).mask)
    assert dataset.scene(3).digits == fresh.scene(3).digits  # placements are drawn again where unknown
    copy = pickle.loads(pickle.dumps(dataset))  # a spawned worker's copy: empty, same scenes
    assert copy._store.get(0) is None
    np.testing.assert_array_equal(copy.scene(0).image, fresh.scene(0).image)


def test_cache_stops_at_its_memory_limit(monkeypatch):
    monkeypatch.setattr(digits, "CACHE_LIMIT_BYTES", 3 * 4 * 32 * 32)
    dataset = DigitsScenes("train", size=32, num_images=5, seed=2)
    for index in range(5):
        dataset[index]
    assert [dataset._store.get(index) is not None for index in range(5)] == [True] * 3 + [False] * 2
    assert torch.equal(dataset[4][0], DigitsScenes("train", size=32, num_images=5, seed=2, cache=False)[4][0])


def _full_canvas_stroke(renderer, rng: np.random.Generator) -> np.ndarray:
    """The stroke as first written: every pen pixel on a (size + 2)^2 canvas, then a 9-term box blur."""
    size = renderer.size
    length = rng.uniform(renderer.scale_range[0], min(size, 0.8 * renderer.scale_range[1]))
    start = rng.uniform(0, size, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    end = start + length * direction
    normal = np.array([-direction[1], direction[0]])
    control = (start + end) / 2 + normal * length * rng.uniform(0.3, 0.7) * rng.choice([-1.0, 1.0])
    t = np.linspace(0.0, 1.0, int(length * 2) + 2)[:, None]
    points = np.round((1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end).astype(np.int64)
    radius = max(1, int(round(length * rng.uniform(0.03, 0.07))))
    offsets = np.stack(np.mgrid[-radius : radius + 1, -radius : radius + 1], axis=-1).reshape(-1, 2)
    offsets = offsets[(offsets**2).sum(axis=1) <= radius**2 + radius]
    pixels = (np.unique(points, axis=0)[:, None, :] + offsets[None]).reshape(-1, 2)
    pixels = pixels[((pixels >= 0) & (pixels < size)).all(axis=1)]
    canvas = np.zeros((size + 2, size + 2), np.float32)
    canvas[pixels[:, 0] + 1, pixels[:, 1] + 1] = 1.0
    return sum(canvas[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)) / 9.0


@pytest.mark.parametrize("size", [16, 48, 128])
def test_stroke_patch_equals_the_full_canvas_drawing(size):
    renderer = DigitsScenes("train", size=size, num_images=1)._renderer
    for seed in range(150):  # many arcs leave the canvas
        alpha, top, left = renderer._stroke_alpha(np.random.default_rng(seed))
        placed = np.zeros((size, size), np.float32)
        canvas_window, alpha_window = _windows(top, left, alpha.shape, size)
        placed[canvas_window] = alpha[alpha_window]
        reference = _full_canvas_stroke(renderer, np.random.default_rng(seed))
        assert reference.dtype == alpha.dtype and np.array_equal(placed, reference), seed


def test_fill_cache_draws_every_missing_scene_in_parallel_processes():
    dataset = DigitsScenes("train", size=32, num_images=9, seed=6)
    dataset[4]
    threads = set(threading.enumerate())
    assert dataset.fill_cache(processes=3) == 8
    assert settled(threads)
    fresh = DigitsScenes("train", size=32, num_images=9, seed=6, cache=False)
    for index in range(9):
        image, mask = dataset._store.get(index)
        np.testing.assert_array_equal(image, fresh.scene(index).image)
        np.testing.assert_array_equal(mask, fresh.scene(index).mask)
    assert dataset.fill_cache() == 0
    with pytest.raises(ValueError, match="processes"):
        dataset.fill_cache(processes=0)
    with pytest.raises(ValueError, match="cache=True"):
        fresh.fill_cache()
