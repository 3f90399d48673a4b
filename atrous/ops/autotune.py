"""Timing exact alternatives once per key and keeping the fastest: the engine of ``backend="auto"``.

The approach of cuDNN's ``torch.backends.cudnn.benchmark``: the first call with a new key runs
each candidate (a warm-up call, then interleaved timed rounds) and caches the one with the lowest
median in a process-wide cache; later calls look the choice up. With gradients the timed unit is
forward plus backward, so training picks what is fastest for training. Both users go through
:func:`autotune`: :func:`atrous.dilated_conv` times formulations of one convolution
(:mod:`atrous.ops.selection`), ``DilatedStack`` times a same-rate run fused against layer by
layer (:mod:`atrous.ops.stack_fusion`).

How much to time is set for a block of code with :func:`tuning_settings`, and nothing is timed
inside :func:`deterministic_backend`; both follow the context (thread or task), as
``torch.autocast`` does.
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from atrous._checks import check_float, check_int, is_int
from atrous.ops.capture import capturing
from atrous.ops.geometry import CHANNELS_LAST

__all__ = [
    "CHOOSER", "Chooser", "TuningSettings", "autotune", "current_settings", "deterministic_backend", "fixed",
    "layout_key", "timed_call", "tuning_settings", "worth_timing",
]  # fmt: skip


@dataclass(frozen=True)
class TuningSettings:
    """How ``backend="auto"`` times; set for a block with :func:`tuning_settings`.

    Attributes:
        budget_s: seconds to spend on the timed rounds of one key, after a warm-up call of each
            candidate (the first call of a formulation can cost many times the next ones). When
            every warm-up took longer than the budget, the candidates more than twice as slow
            as the fastest leave and one timed round decides.
        min_rounds: timed rounds run at least (but one for such huge calls).
        max_rounds: timed rounds run at most.
        min_macs: calls with fewer multiply-adds run their fixed choice untimed.
        max_keys: after this many cached keys, new keys run their default untimed (keeps
            inputs of ever-changing shape from timing forever).
        margin: another candidate replaces the default only when its median is this much faster.
        timer: the clock, e.g. ``time.thread_time`` for the CPU time of one thread on a busy machine.
    """

    budget_s: float = 0.1
    min_rounds: int = 3
    max_rounds: int = 7
    min_macs: int = 2**24
    max_keys: int = 4096
    margin: float = 0.05
    timer: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        check_float(self.budget_s, "budget_s", low=0)
        check_int(self.min_rounds, "min_rounds", low=1)
        check_int(self.max_rounds, "max_rounds", low=1)
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"max_rounds must be an int >= min_rounds={self.min_rounds}, got {self.max_rounds!r}")
        check_int(self.min_macs, "min_macs", low=0)
        check_int(self.max_keys, "max_keys", low=0)
        check_float(self.margin, "margin", low=0, high=1, high_open=True)
        if not callable(self.timer):
            raise TypeError(f"timer must be a callable returning seconds, e.g. time.perf_counter, got {self.timer!r}")


_SETTINGS = contextvars.ContextVar("atrous_tuning_settings", default=TuningSettings())
_FIXED = contextvars.ContextVar("atrous_fixed_backend", default=False)


@contextlib.contextmanager
def tuning_settings(
    *,
    budget_s: float | None = None,
    min_rounds: int | None = None,
    max_rounds: int | None = None,
    min_macs: int | None = None,
    max_keys: int | None = None,
    margin: float | None = None,
    timer: Callable[[], float] | None = None,
) -> Iterator[TuningSettings]:
    """Within the block, ``backend="auto"`` times with these settings; the previous ones return after it.

    Args:
        budget_s, min_rounds, max_rounds, min_macs, max_keys, margin, timer: the fields of
            :class:`TuningSettings` to change; those left ``None`` keep their value in the
            enclosing block. ``min_macs=0`` times every dilated call, however small.

    Yields:
        The settings in force inside the block.

    Raises:
        ValueError, TypeError: a value :class:`TuningSettings` does not allow, named.
    """
    given = dict(budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds, min_macs=min_macs,
                 max_keys=max_keys, margin=margin, timer=timer)  # fmt: skip
    current = _SETTINGS.get()
    if min_rounds is not None and max_rounds is None and is_int(min_rounds) and min_rounds > current.max_rounds:
        # the user never passed max_rounds: say where its value comes from rather than blame it
        raise ValueError(f"min_rounds={min_rounds} exceeds the current max_rounds ({current.max_rounds}); "
                         f"pass max_rounds too, e.g. tuning_settings(min_rounds={min_rounds}, max_rounds={min_rounds})")
    settings = replace(current, **{name: value for name, value in given.items() if value is not None})
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def current_settings() -> TuningSettings:
    """The settings in force here (the defaults outside any :func:`tuning_settings` block)."""
    return _SETTINGS.get()


@contextlib.contextmanager
def deterministic_backend() -> Iterator[None]:
    """Within the block, ``backend="auto"`` runs fixed formulations and never times anything.

    Convolutions run ``native`` (bit-for-bit plain PyTorch) and ``DilatedStack`` fuses its
    same-rate runs as ``use_space_to_batch`` says, so repeated runs give identical results.
    ``torch.use_deterministic_algorithms(True)`` has the same effect.
    """
    token = _FIXED.set(True)
    try:
        yield
    finally:
        _FIXED.reset(token)


def fixed() -> bool:
    """Whether ``auto`` must use its fixed choice now (opt-out, deterministic mode or capture)."""
    return capturing() or _FIXED.get() or torch.are_deterministic_algorithms_enabled()


def worth_timing(device: torch.device, macs: int) -> bool:
    """Whether a call of ``macs`` multiply-adds on ``device`` may be timed now: not in a fixed mode
    (checked first: a compiler must not look past it), on a device whose work the clock can wait
    for, and large enough for ``min_macs``."""
    return not fixed() and device.type in ("cpu", "cuda") and macs >= _SETTINGS.get().min_macs


@dataclass(slots=True)
class Chooser:
    """The choices ``auto`` made, and those replayed from a record, by key.

    Attributes:
        cache: key -> the winning candidate's name.
        preset: ``repr(key)`` -> name, taken instead of timing when the key comes up (and it
            is a candidate then).
        lock: held while a key is timed, so that threads time each key once.
    """

    cache: dict[Hashable, str] = field(default_factory=dict)
    preset: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def choose(self, key: Hashable, names: Sequence[str], run: Callable[[str], object], device: torch.device) -> str:
        """The cached choice for ``key``, timing ``run(name)`` for each of ``names`` on a miss.

        Args:
            key: everything the choice depends on.
            names: candidate names, the default first.
            run: runs one candidate (forward, or forward and backward) on the real inputs.
            device: where ``run`` executes (CUDA work is synchronised around each timing).
        """
        choice = self.cache.get(key)
        if choice is not None:
            return choice
        settings = _SETTINGS.get()
        with self.lock:
            if key not in self.cache:
                if len(self.cache) >= settings.max_keys:
                    return names[0]
                replayed = self.preset.get(repr(key))
                self.cache[key] = replayed if replayed in names else _measure(names, run, device, settings)
            return self.cache[key]


def _time(run: Callable[[str], object], name: str, device: torch.device, timer: Callable[[], float]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = timer()
    run(name)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return timer() - start


def _measure(
    names: Sequence[str], run: Callable[[str], object], device: torch.device, settings: TuningSettings
) -> str:
    default, warm, timer = names[0], {}, settings.timer
    for name in names:  # warm-up: library kernels get built, memory allocated (one-off, not compared)
        try:
            warm[name] = _time(run, name, device, timer)
        except (RuntimeError, NotImplementedError):  # e.g. a layout this dtype lacks; the default must work
            if name == default:
                return default
            continue
    fastest = min(warm.values())
    huge = fastest >= settings.budget_s  # one call costs more than the budget: a single round
    alive = [name for name in warm if name == default or not huge or warm[name] <= 2 * fastest]
    samples: dict[str, list[float]] = {name: [] for name in alive}
    spent, min_rounds, max_rounds = 0.0, *((1, 1) if huge else (settings.min_rounds, settings.max_rounds))
    while len(alive) > 1:
        rounds = len(samples[default])
        if rounds >= max_rounds or (rounds >= min_rounds and spent >= settings.budget_s):
            medians = {name: statistics.median(samples[name]) for name in alive}
            best = min(medians, key=medians.get)
            return best if medians[best] < (1 - settings.margin) * medians[default] else default
        shift = rounds % len(alive)  # rotate the order so no candidate always runs first
        for name in alive[shift:] + alive[:shift]:
            samples[name].append(_time(run, name, device, timer))
            spent += samples[name][-1]
        if rounds == 0:  # clear losers leave after the first round
            best = min(samples[name][0] for name in alive)
            alive = [name for name in alive if name == default or samples[name][0] <= 1.5 * best]
    return default


CHOOSER = Chooser()  # process-wide, like cuDNN's benchmark cache


def autotune(key: Hashable, candidates: Callable[[], Mapping[str, Callable[[], object]]], device: torch.device) -> str:
    """The name of the fastest candidate for ``key``: cached, replayed, or timed now.

    Args:
        key: everything the choice depends on (shapes, dtype, device, layout, directions, threads).
        candidates: builds, only when ``key`` has no choice yet, the candidates by name (the
            default first), each a closure that runs one way once (see :func:`timed_call`).
        device: where the candidates run.

    Returns:
        One of the candidates' names; the only one without timing when there is one.
    """
    choice = CHOOSER.cache.get(key)
    if choice is not None:
        return choice
    runs = candidates()
    names = list(runs)
    if len(names) == 1:
        return names[0]
    return CHOOSER.choose(key, names, lambda name: runs[name](), device)


def layout_key(x: torch.Tensor) -> tuple:
    """What of ``x`` besides its shape can change which candidate wins."""
    if x.is_contiguous():
        memory = "contiguous"
    elif CHANNELS_LAST.get(x.ndim - 2) is not None and x.is_contiguous(memory_format=CHANNELS_LAST[x.ndim - 2]):
        memory = "channels_last"
    else:
        memory = "strided"
    autocast = torch.is_autocast_enabled(x.device.type)
    return (x.dtype, x.device, memory, autocast, torch.get_num_threads())


def timed_call(
    forward: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor | None],
    grads: Sequence[bool],
    params: Sequence[torch.Tensor] = (),
) -> Callable[[], None]:
    """A closure that runs ``forward(*copies)`` once on detached copies of ``inputs``, and the
    backward pass to the copies whose entry of ``grads`` is set and to ``params`` when there
    are any; the caller's graph, every ``.grad`` and the random number generators are left as
    they were (a dropout inside ``forward`` draws the same numbers the real call will).

    Args:
        forward: one way of computing the call.
        inputs: its tensor arguments (None passes through).
        grads: one flag per input: whether the timed backward pass reaches it.
        params: tensors ``forward`` reads by itself (a module's parameters) that the backward
            pass reaches too; pass none when no gradient is wanted.
    """
    copies = [None if t is None else t.detach().requires_grad_(g) for t, g in zip(inputs, grads)]
    wanted = [t for t, g in zip(copies, grads) if g] + list(params)
    devices = sorted({t.device for t in copies if t is not None and t.device.type == "cuda"}, key=str)

    def call() -> None:
        with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(bool(wanted)):
            y = forward(*copies)
            if wanted:
                torch.autograd.grad(y, wanted, torch.ones_like(y))

    return call
