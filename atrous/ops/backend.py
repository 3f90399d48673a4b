"""``backend="auto"``: pick the fastest exact formulation of a dilated convolution by timing it.

The first call with a new (shape, weight shape, stride, dilation, padding, groups, dtype,
device, memory layout, which inputs need gradients, thread count) times the candidate
formulations of :mod:`atrous.ops.formulations` a few times each, interleaved, and caches the
one with the lowest median in a process-wide dict (the approach of cuDNN's
``torch.backends.cudnn.benchmark``); later calls look the choice up. With gradients the timed
unit is forward plus backward, so training picks what is fastest for training.

All candidates compute the same result up to floating-point rounding. ``auto`` runs ``native``
(plain PyTorch, no timing) when nothing is dilated, when the call is too small to be worth
timing, inside :func:`deterministic_backend`, when ``torch.use_deterministic_algorithms(True)``
is on, inside ``torch.func`` transforms, and while a graph is being captured
(``torch.jit.trace``, ``torch.compile``, ``torch.export``, ONNX export), so captured graphs
hold one fixed, traceable convolution.
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from atrous.ops.formulations import FORMULATIONS, ConvSpec, applicable, candidates, capturing, functorch_wrapped

BACKENDS = ("auto", *FORMULATIONS)
STACK_CHOICES = ("layers", "space_to_batch")  # what DilatedStack times for a run of equal rates
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank
_FIXED = contextvars.ContextVar("atrous_fixed_backend", default=False)


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


def check_backend(backend: str) -> str:
    """``backend`` itself, or a ValueError naming the allowed values."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@dataclass
class Chooser:
    """Times candidates once per key and caches the winner.

    Attributes:
        budget_s: time to spend on the timed rounds of one key, after a warm-up call of each
            candidate (the first call of a formulation can cost many times the next ones). When
            every warm-up took longer than the budget, the candidates more than twice as slow
            as the fastest leave and one timed round decides.
        min_rounds: timed rounds run at least (but one for such huge calls).
        max_rounds: timed rounds run at most.
        min_macs: calls with fewer multiply-adds run the first candidate untimed.
        max_keys: after this many cached keys, new keys run the first candidate untimed (keeps
            inputs of ever-changing shape from timing forever).
        margin: another candidate replaces the first only when its median is this much faster.
        timer: the clock; tests replace it to count timings.
    """

    budget_s: float = 0.1
    min_rounds: int = 3
    max_rounds: int = 7
    min_macs: int = 2**24
    max_keys: int = 4096
    margin: float = 0.05
    timer: Callable[[], float] = time.perf_counter
    cache: dict[Hashable, str] = field(default_factory=dict)
    preset: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def choose(
        self, key: Hashable, names: Sequence[str], run: Callable[[str], object], device: torch.device
    ) -> str:
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
        with self.lock:
            if key not in self.cache:
                if len(self.cache) >= self.max_keys:
                    return names[0]
                replayed = self.preset.get(repr(key))
                self.cache[key] = replayed if replayed in names else self._measure(names, run, device)
            return self.cache[key]

    def _time(self, run: Callable[[str], object], name: str, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = self.timer()
        run(name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return self.timer() - start

    def _measure(self, names: Sequence[str], run: Callable[[str], object], device: torch.device) -> str:
        default, warm = names[0], {}
        for name in names:  # warm-up: library kernels get built, memory allocated (one-off, not compared)
            try:
                warm[name] = self._time(run, name, device)
            except (RuntimeError, NotImplementedError):  # e.g. a layout this dtype lacks; the default must work
                if name == default:
                    return default
                continue
        fastest = min(warm.values())
        huge = fastest >= self.budget_s  # one call costs more than the budget: a single round
        alive = [name for name in warm if name == default or not huge or warm[name] <= 2 * fastest]
        samples: dict[str, list[float]] = {name: [] for name in alive}
        spent, min_rounds, max_rounds = 0.0, *((1, 1) if huge else (self.min_rounds, self.max_rounds))
        while len(alive) > 1:
            rounds = len(samples[default])
            if rounds >= max_rounds or (rounds >= min_rounds and spent >= self.budget_s):
                medians = {name: statistics.median(samples[name]) for name in alive}
                best = min(medians, key=medians.get)
                return best if medians[best] < (1 - self.margin) * medians[default] else default
            shift = rounds % len(alive)  # rotate the order so no candidate always runs first
            for name in alive[shift:] + alive[:shift]:
                samples[name].append(self._time(run, name, device))
                spent += samples[name][-1]
            if rounds == 0:  # clear losers leave after the first round
                best = min(samples[name][0] for name in alive)
                alive = [name for name in alive if name == default or samples[name][0] <= 1.5 * best]
        return default


CHOOSER = Chooser()


def clear_backend_cache() -> None:
    """Forget every cached choice (the next call of each key times again)."""
    with CHOOSER.lock:
        CHOOSER.cache.clear()
        CHOOSER.preset.clear()


def backend_choices() -> dict[Hashable, str]:
    """A copy of the cache: key -> chosen formulation."""
    with CHOOSER.lock:
        return dict(CHOOSER.cache)


def export_choices() -> dict[str, str]:
    """The choices made so far (and those replayed), as JSON-able ``{repr(key): formulation}``.

    Different formulations round differently, so a run that must repeat bit for bit records
    these and gives them to :func:`replay_choices` in the next process.
    """
    with CHOOSER.lock:
        return {**CHOOSER.preset, **{repr(key): name for key, name in CHOOSER.cache.items()}}


def replay_choices(choices: dict[str, str]) -> int:
    """Use these recorded choices instead of timing when their keys come up; returns how many were taken.

    Entries naming no known formulation are ignored; a choice that is not a candidate for its
    call when it comes up is timed as usual.
    """
    if not isinstance(choices, dict):
        raise TypeError(f"choices must be a dict of str -> formulation name, got {type(choices).__name__}")
    known = (*FORMULATIONS, *STACK_CHOICES)
    valid = {key: name for key, name in choices.items() if isinstance(key, str) and name in known}
    with CHOOSER.lock:
        CHOOSER.preset.update(valid)
    return len(valid)


def _conv_macs(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> int:
    macs = x.shape[0] * weight.numel()
    for n, k, s, d, (lo, hi) in zip(x.shape[2:], weight.shape[2:], spec.stride, spec.dilation, spec.pads):
        macs *= (n + lo + hi - (k - 1) * d - 1) // s + 1
    return macs


def _grad_flags(*tensors: torch.Tensor | None) -> tuple[bool, ...]:
    enabled = torch.is_grad_enabled()
    return tuple(enabled and t is not None and t.requires_grad for t in tensors)


def layout_key(x: torch.Tensor) -> tuple:
    """What of ``x`` besides its shape can change which formulation wins."""
    if x.is_contiguous():
        memory = "contiguous"
    elif x.ndim in _CHANNELS_LAST and x.is_contiguous(memory_format=_CHANNELS_LAST[x.ndim]):
        memory = "channels_last"
    else:
        memory = "strided"
    autocast = torch.is_autocast_enabled(x.device.type)
    return (x.dtype, x.device, memory, autocast, torch.get_num_threads())


def timed_call(grads: Sequence[bool], inputs: Sequence[torch.Tensor | None], forward: Callable) -> Callable[[], None]:
    """A closure that runs ``forward(*copies)`` on detached copies of ``inputs`` (and the backward
    pass when any of ``grads`` is set), without touching the caller's graph or ``.grad``."""
    copies = [None if t is None else t.detach().requires_grad_(g) for t, g in zip(inputs, grads)]
    wanted = [t for t, g in zip(copies, grads) if g]

    def call() -> None:
        if not wanted:
            with torch.no_grad():
                forward(*copies)
            return
        with torch.enable_grad():
            y = forward(*copies)
            torch.autograd.grad(y, wanted, torch.ones_like(y))

    return call


def run_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, backend: str = "auto"
) -> torch.Tensor:
    """Run the convolution with formulation ``backend`` (``"auto"``: the cached fastest).

    Args:
        x: ``(N, C_in, *S)``, already checked against ``weight``.
        weight: ``(C_out, C_in / groups, *K)``.
        bias: ``(C_out,)`` or None.
        spec: stride, dilation, resolved padding and groups.
        backend: ``"auto"`` or a name in :data:`BACKENDS`; a formulation that does not apply
            to this call (e.g. ``"gemm"`` in 2D), or whose Python depends on the input size (or
            that is a custom autograd function) while a graph is traced, compiled or exported,
            runs ``native`` instead.

    Returns:
        ``(N, C_out, *S_out)``.
    """
    if backend == "auto":
        backend = _auto(x, weight, bias, spec)
    elif backend not in FORMULATIONS or not applicable(backend, x, weight, spec):
        backend = "native"
    elif backend not in _CAPTURE_SAFE and capturing():
        backend = "native"  # their Python branches on sizes; a captured graph would bake them in
    return FORMULATIONS[backend](x, weight, bias, spec)


# No branch on the input size and no custom autograd function (which exporters cannot see into).
_CAPTURE_SAFE = ("native", "pad", "channels_last")


def _auto(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> str:
    if (
        capturing()  # first, so that a compiler or tracer never looks past it
        or all(d == 1 for d in spec.dilation)
        or x.device.type not in ("cpu", "cuda")
        or fixed()
        or functorch_wrapped(x)  # inside torch.func transforms: timing would need a graph of its own
        or functorch_wrapped(weight)
        or _conv_macs(x, weight, spec) < CHOOSER.min_macs
    ):
        return "native"
    grads = _grad_flags(x, weight, bias)
    key = ("conv", tuple(x.shape), tuple(weight.shape), bias is not None, spec, grads, *layout_key(x))
    choice = CHOOSER.cache.get(key)
    if choice is not None:
        return choice
    names = candidates(x, weight, spec, training=any(grads))
    if len(names) == 1:
        return names[0]
    runs = {
        name: timed_call(grads, (x, weight, bias), lambda *t, f=FORMULATIONS[name]: f(*t, spec)) for name in names
    }
    return CHOOSER.choose(key, names, lambda name: runs[name](), x.device)
