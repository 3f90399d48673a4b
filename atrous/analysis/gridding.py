"""Gridding of stacked dilated convolutions, the HDC rule, and gridding-free rate schedules.

A stack of dilated convolutions reaches input offset ``t`` along as many paths as there are
ways to write ``t`` as a sum of one tap per layer (tap ``j`` of layer ``i`` sits at
``j * r_i``). Offsets inside the field that no path reaches are the "holes" of the gridding
effect. Wang et al. 2018 ("Understanding convolution for semantic segmentation") state the
Hybrid Dilated Convolution (HDC) rule: with ``M_n = r_n`` and
``M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i)`` (the largest distance between
two non-zero values a layer still has to fill), a group of rates is gridding-free when
``M_2 <= K`` and its rates share no common factor greater than 1, e.g. 1, 2, 5 but not 2, 4, 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atrous._checks import check_int, check_rates
from atrous.ops.padding import kernel_extent


def _check(rates: Sequence[int], kernel_size: int) -> tuple[tuple[int, ...], int]:
    return check_rates(rates), check_int(kernel_size, "kernel_size", low=1)


@dataclass(frozen=True)
class Gridding:
    """Exact coverage of a stack's field along one axis.

    Attributes:
        rates: the dilation of each layer.
        kernel_size: taps per layer along the axis.
        offsets: input offset of each coverage entry relative to the output: centred
            (``-h..h``) for odd kernels, causal (``-(size - 1)..0``) for even ones.
        coverage: number of paths from the output to each offset, ``(size,)`` int array.
        holes: offsets inside the field no path reaches.
    """

    rates: tuple[int, ...]
    kernel_size: int
    offsets: np.ndarray
    coverage: np.ndarray
    holes: tuple[int, ...]

    @property
    def size(self) -> int:
        """Receptive field: ``1 + (K - 1) * sum(rates)``."""
        return len(self.coverage)

    @property
    def full(self) -> bool:
        """Whether every offset in the field is reached (no gridding)."""
        return not self.holes

    def coverage_map(self, dims: int = 2) -> np.ndarray:
        """Paths to each offset of a ``dims``-D stack of square kernels: the outer product.

        Returns:
            ``(size,) * dims`` array; zero exactly where some axis has a hole.
        """
        result = self.coverage
        for _ in range(dims - 1):
            result = np.multiply.outer(result, self.coverage)
        return result


def gridding(rates: Sequence[int], kernel_size: int = 3) -> Gridding:
    """Coverage map and holes of a stack of dilated convolutions.

    Args:
        rates: dilation of each layer, in order (order does not change the coverage).
        kernel_size: kernel size of every layer.

    Returns:
        A :class:`Gridding`; ``coverage_map(2)`` gives the 2D map of square kernels.
    """
    rates, kernel_size = _check(rates, kernel_size)
    counts = [1]
    for rate in rates:  # multiply by the polynomial 1 + z^r + ... + z^((K-1) r), exactly
        grown = [0] * (len(counts) + kernel_extent(kernel_size, rate) - 1)
        for tap in range(kernel_size):
            for i, count in enumerate(counts):
                grown[i + tap * rate] += count
        counts = grown
    dtype = np.int64 if max(counts) < 2**63 else object
    coverage = np.array(counts, dtype=dtype)
    span = len(counts) - 1
    first = -(span // 2) if kernel_size % 2 else -span
    offsets = np.arange(first, first + len(counts))
    holes = tuple(int(o) for o, c in zip(offsets, counts) if c == 0)
    return Gridding(rates, kernel_size, offsets, coverage, holes)


@dataclass(frozen=True)
class HDCCheck:
    """Verdict of the Hybrid Dilated Convolution rule.

    Attributes:
        valid: ``M_2 <= K`` and no common factor > 1.
        explanation: one human sentence (two when gridding() disagrees).
        max_distances: ``(M_1, ..., M_n)``.
        common_factor: greatest common divisor of the rates.
        holes: offsets :func:`gridding` finds unreached, for comparison.
    """

    valid: bool
    explanation: str
    max_distances: tuple[int, ...]
    common_factor: int
    holes: tuple[int, ...]


def hdc_check(rates: Sequence[int], kernel_size: int = 3) -> HDCCheck:
    """Check a group of rates against HDC (Wang et al. 2018).

    Args:
        rates: the dilations of one group of consecutive layers, e.g. ``(1, 2, 5)``.
        kernel_size: ``K``, the kernel size of the layers.

    Returns:
        An :class:`HDCCheck`.
    """
    rates, kernel_size = _check(rates, kernel_size)
    distances = _max_distances(rates)
    factor = math.gcd(*rates)
    m2 = distances[1] if len(rates) > 1 else None
    spaced = m2 is None or m2 <= kernel_size
    valid = spaced and factor == 1
    holes = gridding(rates, kernel_size).holes
    names = ", ".join(map(str, rates))
    reasons = []
    if not spaced:
        reasons.append(f"M_2 = {m2} > K = {kernel_size}, so the second layer's taps are too far apart "
                       f"for the first to fill")
    if factor > 1:
        reasons.append(f"every rate is a multiple of {factor}, so only one input in {factor} is ever seen")
    if valid:
        m2_text = f"M_2 = {m2} <= K = {kernel_size}" if m2 is not None else "a single layer of rate 1"
        explanation = f"rates {names} satisfy HDC for kernel {kernel_size}: {m2_text} and the rates share no common factor."
    else:
        explanation = f"rates {names} break HDC for kernel {kernel_size}: " + "; ".join(reasons) + "."
    if valid and holes:
        explanation += f" Yet the stack still misses offsets {_short(holes)} (its first rate is {rates[0]})."
    elif not valid and not holes:
        explanation += " gridding() nevertheless finds every offset of the field reached."
    elif holes:
        explanation += f" Unreached offsets: {_short(holes)}."
    return HDCCheck(valid, explanation, tuple(distances), factor, holes)


def _max_distances(rates: Sequence[int]) -> list[int]:
    """Wang et al.'s ``M_i``, from ``M_n = r_n`` backwards."""
    distances = [rates[-1]]
    for rate in reversed(rates[:-1]):
        after = distances[0]
        distances.insert(0, max(after - 2 * rate, after - 2 * (after - rate), rate))
    return distances


def _passes_hdc(rates: Sequence[int], kernel_size: int) -> bool:
    return (len(rates) == 1 or _max_distances(rates)[1] <= kernel_size) and math.gcd(*rates) == 1


def _short(values: Sequence[int], limit: int = 8) -> str:
    text = ", ".join(map(str, values[:limit]))
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# Candidate schedules checked per depth. For K = 2 and 3 the first candidates already pass, at
# the K ** n bound; the HDC formula's "2 r_i" is the K = 3 case, and for larger K it rejects
# most schedules, so the search moves on to a deeper stack rather than enumerate them all.
_SEARCH_BUDGET = 5_000


def suggest_rates(
    target_rf: int,
    kernel_size: int = 3,
    *,
    max_rate: int | None = None,
    max_layers: int = 64,
) -> tuple[int, ...]:
    """Fewest layers whose field reaches ``target_rf`` without gridding and passing HDC.

    No stack of ``n`` layers covers more than ``K ** n`` offsets without holes, so the search
    starts at ``n = ceil(log_K(target_rf))``. For each ``n`` it tries schedules whose every
    prefix is gap-free (rate ``<=`` the prefix's field, which the geometric ``1, K, K^2, ...``
    meets), smallest rates first, and returns the first that passes :func:`hdc_check`. For
    ``K = 2`` and ``3`` this always lands on the ``K ** n`` bound; for larger kernels each depth
    is searched up to a fixed budget of candidates.

    Args:
        target_rf: the receptive field to reach, ``>= 1``.
        kernel_size: kernel size of every layer, ``>= 2``.
        max_rate: largest dilation allowed (None: no limit).
        max_layers: give up beyond this many layers.

    Returns:
        The rates, e.g. ``suggest_rates(67)`` -> 4 rates with field ``>= 67``.

    Raises:
        ValueError: bad arguments, or no schedule within ``max_layers``.
    """
    target_rf = check_int(target_rf, "target_rf", low=1)
    kernel_size = check_int(kernel_size, "kernel_size", low=2)
    if max_rate is not None:
        max_rate = check_int(max_rate, "max_rate", low=1)
    need = -(-(target_rf - 1) // (kernel_size - 1))  # sum of rates reaching the target
    if need == 0:
        return (1,)

    def cap(position: int) -> float:
        # M_i >= r_i and M_i >= M_(i+1) / 3, so M_2 <= K forces r_i <= K * 3^(i - 2).
        bound = kernel_size * 3 ** (position - 2) if position >= 2 else 1
        return min(bound, max_rate or math.inf)

    def grow(total: int, position: int, layers: int) -> int:
        for i in range(position, position + layers):  # largest gap-free growth from here
            total += min((kernel_size - 1) * total + 1, cap(i))
        return total

    budget = [0]

    def search(prefix: list[int], total: int, left: int, descending: bool) -> tuple[int, ...] | None:
        budget[0] += 1
        if left == 0:
            # Every prefix is gap-free by construction, so the whole stack has no holes.
            return tuple(prefix) if total >= need and _passes_hdc(prefix, kernel_size) else None
        position = len(prefix) + 1
        largest = int(min((kernel_size - 1) * total + 1, cap(position)))
        for rate in range(largest, 0, -1) if descending else range(1, largest + 1):
            if grow(total + rate, position + 1, left - 1) < need:
                if descending:
                    break
                continue
            found = search([*prefix, rate], total + rate, left - 1, descending)
            if found or budget[0] > _SEARCH_BUDGET:
                return found
        return None

    layers = max(1, math.ceil(math.log(target_rf, kernel_size) - 1e-12))
    while layers <= max_layers:
        # Smallest rates first lands close to the target; largest first finds the geometric
        # schedules that the K > 3 cases need.
        for descending in (False, True):
            budget[0] = 0
            found = search([], 0, layers, descending) if grow(0, 1, layers) >= need else None
            if found:
                assert gridding(found, kernel_size).full and hdc_check(found, kernel_size).valid
                return found
        layers += 1
    raise ValueError(
        f"no gridding-free schedule of at most max_layers={max_layers} layers reaches target_rf={target_rf} "
        f"with kernel_size={kernel_size} and max_rate={max_rate}"
    )
