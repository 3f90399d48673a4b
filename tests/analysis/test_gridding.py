"""Gridding coverage against brute-force path enumeration; HDC verdicts from Wang et al. 2018."""

import itertools
import math
import random

import numpy as np
import pytest
from PIL import Image

from atrous.analysis import gridding, hdc_check, suggest_rates


def brute_force_coverage(rates, kernel):
    counts = {}
    for taps in itertools.product(range(kernel), repeat=len(rates)):
        offset = sum(t * r for t, r in zip(taps, rates))
        counts[offset] = counts.get(offset, 0) + 1
    span = (kernel - 1) * sum(rates)
    return np.array([counts.get(i, 0) for i in range(span + 1)])


@pytest.mark.parametrize("seed", range(8))
def test_coverage_counts_paths(seed):
    rng = random.Random(seed)
    rates = [rng.randint(1, 6) for _ in range(rng.randint(1, 4))]
    kernel = rng.choice([2, 3, 4])
    result = gridding(rates, kernel)
    expected = brute_force_coverage(rates, kernel)
    np.testing.assert_array_equal(result.coverage, expected)
    assert result.size == 1 + (kernel - 1) * sum(rates)
    assert len(result.holes) == int((expected == 0).sum())


def test_holes_of_1_2_9_and_2d_map():
    result = gridding((1, 2, 9))
    assert result.holes == (-5, -4, 4, 5)
    assert result.offsets[0] == -12 and result.offsets[-1] == 12
    grid = result.coverage_map(2)
    assert grid.shape == (25, 25) and grid[12, 12] == result.coverage[12] ** 2
    assert (grid[result.offsets == 4] == 0).all()
    assert gridding((1, 2, 4, 8)).full and gridding((1, 2, 4, 8)).size == 31


@pytest.mark.parametrize("rates", [(1, 2, 5), (1, 2, 3)])
def test_hdc_valid(rates):
    verdict = hdc_check(rates, 3)
    assert verdict.valid and "satisfy" in verdict.explanation
    assert gridding(rates).full


@pytest.mark.parametrize("rates", [(2, 4, 8), (1, 2, 9), (3, 6, 9)])
def test_hdc_invalid(rates):
    verdict = hdc_check(rates, 3)
    assert not verdict.valid and "break" in verdict.explanation
    assert not gridding(rates).full


def test_hdc_max_distances_follow_the_recurrence():
    # by hand: M_3 = 9, M_2 = max(9 - 4, 9 - 2 * 7, 2) = 5, M_1 = max(5 - 2, 5 - 8, 1) = 3
    assert hdc_check((1, 2, 9)).max_distances == (3, 5, 9)
    assert hdc_check((3, 6, 9)).common_factor == 3


def shortest_by_brute_force(target, kernel=3):
    for layers in range(1, 5):
        limit = (kernel**layers - 1) // (kernel - 1)
        for rates in itertools.product(range(1, limit + 1), repeat=layers):
            if 1 + (kernel - 1) * sum(rates) >= target and hdc_check(rates, kernel).valid and gridding(rates, kernel).full:
                return layers
    return None


@pytest.mark.parametrize("target", [2, 3, 4, 9, 10, 20, 27, 28])
def test_suggest_rates_is_shortest(target):
    rates = suggest_rates(target)
    assert 1 + 2 * sum(rates) >= target
    assert hdc_check(rates).valid and gridding(rates).full
    assert len(rates) == shortest_by_brute_force(target)


def test_suggest_rates_larger_targets():
    rates = suggest_rates(67)
    assert len(rates) == 4 and 1 + 2 * sum(rates) >= 67  # 3 layers cover at most 3^3 = 27 offsets
    wavenet = suggest_rates(1024, 2)
    assert len(wavenet) == 10 and 1 + sum(wavenet) >= 1024 and gridding(wavenet, 2).full
    capped = suggest_rates(100, max_rate=8)
    assert max(capped) <= 8 and hdc_check(capped).valid and gridding(capped).full
    assert len(capped) == math.ceil((100 - 1 - 2 * (1 + 2 + 7)) / 16) + 3  # three to reach 8, then 8s


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="rates"):
        gridding([])
    with pytest.raises(ValueError, match="rates"):
        hdc_check((1, 0, 2))
    with pytest.raises(ValueError, match="kernel_size"):
        suggest_rates(10, 1)
    with pytest.raises(TypeError, match="target_rf"):
        suggest_rates(10.5)


def test_coverage_plot(tmp_path):
    from atrous.viz import plot_coverage

    for dims in (1, 2):
        path = plot_coverage(gridding((2, 4, 8)), tmp_path / f"c{dims}.png", dims=dims)
        with Image.open(path) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    with pytest.raises(ValueError, match="png"):
        plot_coverage(gridding((1, 2)), tmp_path / "c.jpg")
