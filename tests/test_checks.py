"""The argument checks every layer shares: the valid edge values pass, everything else is refused
with ``TypeError`` (wrong type: a bool for an int, a string, a float for an int) or ``ValueError``
(wrong value: out of range, NaN, infinite, wrong length), the message naming the argument, the
value and what is allowed."""

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrous._checks import (
    check_bool,
    check_float,
    check_int,
    check_ints,
    check_rates,
    finite_numbers,
    int_range,
    is_int,
    is_number,
    number_range,
)


def refused(error, call, *, name: str, value: object):
    """``call()`` raises ``error`` whose message names ``name`` and ``value``."""
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert message.startswith(f"{name} must be "), message
    assert message.endswith(f"got {value!r}"), message
    return message


def test_predicates_refuse_bools():
    assert is_int(0) and is_int(-3) and is_int(2**80)
    assert not any(is_int(v) for v in (True, False, 1.0, "1", None, np.float64(1.0)))
    assert is_number(1) and is_number(0.5) and is_number(math.nan) and is_number(math.inf)
    assert not any(is_number(v) for v in (True, False, "1", None, 1j))


@given(low=st.integers(-1000, 1000), width=st.integers(0, 1000))
def test_check_int_takes_both_bounds_and_nothing_beyond(low, width):
    high = low + width
    assert check_int(low, "n", low=low, high=high) == low
    assert check_int(high, "n", low=low, high=high) == high
    for bad in (low - 1, high + 1):
        message = refused(ValueError, lambda: check_int(bad, "n", low=low, high=high), name="n", value=bad)
        assert int_range(low, high) in message


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", None, [1], np.int64(1)])
def test_check_int_refuses_other_types(bad):
    message = refused(TypeError, lambda: check_int(bad, "channels", low=1), name="channels", value=bad)
    assert message == f"channels must be an int >= 1, got {bad!r}"


def test_check_int_index_accepts_numpy_ints_but_never_bools():
    value = check_int(np.int64(3), "index", low=0, index=True)
    assert value == 3 and type(value) is int
    refused(TypeError, lambda: check_int(True, "index", low=0, index=True), name="index", value=True)
    refused(TypeError, lambda: check_int(np.float32(3), "index", low=0, index=True), name="index",
            value=np.float32(3))


def test_the_allowed_ranges_read_as_the_messages_say():
    assert int_range(1) == "an int >= 1"
    assert int_range(None, 32) == "an int <= 32"
    assert int_range(1, 4096) == "an int from 1 to 4,096"
    assert int_range() == "an int"
    assert number_range(0, 1, high_open=True) == "a finite number >= 0 and < 1"
    assert number_range(0, low_open=True) == "a finite number > 0"
    assert number_range() == "a finite number"


@pytest.mark.parametrize(("low", "high", "low_open", "high_open"),
                         [(0.0, 1.0, False, False), (0.0, 1.0, True, True), (-2.5, 1e3, True, False)])
def test_check_float_takes_its_interval_and_nothing_beyond(low, high, low_open, high_open):
    kwargs = {"low": low, "high": high, "low_open": low_open, "high_open": high_open}
    inside = [math.nextafter(low, math.inf), math.nextafter(high, -math.inf)]
    inside += [] if low_open else [low]
    inside += [] if high_open else [high]
    for value in inside:
        assert check_float(value, "lr", **kwargs) == value
    outside = [math.nextafter(low, -math.inf), math.nextafter(high, math.inf), math.nan, math.inf, -math.inf]
    outside += [low] if low_open else []
    outside += [high] if high_open else []
    for bad in outside:
        message = refused(ValueError, lambda: check_float(bad, "lr", **kwargs), name="lr", value=bad)
        assert number_range(low, high, low_open=low_open, high_open=high_open) in message


def test_check_float_takes_ints_as_floats_and_refuses_other_types():
    value = check_float(2, "scale")
    assert value == 2.0 and type(value) is float
    for bad in (True, "0.5", None, [0.5], 1j):
        refused(TypeError, lambda: check_float(bad, "scale"), name="scale", value=bad)
    refused(ValueError, lambda: check_float(math.nan, "scale"), name="scale", value=math.nan)


def test_check_ints_takes_a_sequence_of_the_right_length_in_range():
    assert check_ints([1, 2, 3], "kernel_size", length=3) == (1, 2, 3)
    assert check_ints((0, 5), "padding", length=2, low=0, high=5) == (0, 5)
    assert check_ints([4], "sizes", length=range(1, 4)) == (4,)
    assert check_ints(3, "stride", length=2, scalar=True) == (3, 3)


@pytest.mark.parametrize(
    ("value", "kwargs", "error"),
    [
        ("12", {"length": 2}, TypeError),  # a string is not a sequence of ints
        (3, {"length": 2}, TypeError),  # one int only with scalar=True
        (True, {"length": 2, "scalar": True}, TypeError),
        ((1, True), {"length": 2}, TypeError),
        ((1, 2.0), {"length": 2}, TypeError),
        ((1, math.nan), {"length": 2}, TypeError),
        ((1, 2, 3), {"length": 2}, ValueError),
        ((1,), {"length": range(2, 5)}, ValueError),
        ((), {}, ValueError),  # no length given: any non-empty sequence
        ((1, 0), {"length": 2}, ValueError),
        ((1, 9), {"length": 2, "high": 8}, ValueError),
        (-1, {"length": 2, "low": 0, "scalar": True}, ValueError),
    ],
)
def test_check_ints_refuses(value, kwargs, error):
    refused(error, lambda: check_ints(value, "dilation", **kwargs), name="dilation", value=value)


def test_check_ints_says_what_is_allowed():
    with pytest.raises(ValueError, match=re.escape("dilation must be an int >= 1 or a sequence of 2 ints >= 1, got 0")):
        check_ints(0, "dilation", length=2, scalar=True)
    with pytest.raises(ValueError, match=re.escape("input_shape must be a sequence of 2 to 4 ints >= 1")):
        check_ints((1,), "input_shape", length=range(2, 5))


@given(st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_check_rates_returns_every_sequence_of_rates_as_a_tuple(rates):
    assert check_rates(rates) == tuple(rates)
    assert check_rates(tuple(rates), high=64) == tuple(rates)


@pytest.mark.parametrize(
    ("rates", "error"),
    [(2, TypeError), ("124", TypeError), (None, TypeError), ([1, 2.0], TypeError), ([1, True], TypeError),
     ([1, math.nan], TypeError), ([], ValueError), ([1, 0], ValueError), ([1, -2], ValueError)],
)
def test_check_rates_refuses(rates, error):
    message = refused(error, lambda: check_rates(rates), name="rates", value=rates)
    assert "a sequence of ints >= 1 such as (1, 2, 4)" in message


def test_check_rates_names_the_argument_and_its_upper_bound():
    refused(ValueError, lambda: check_rates([1, 2, 5], "dilations", high=4), name="dilations", value=[1, 2, 5])


def test_check_bool_takes_only_true_and_false():
    assert check_bool(True, "bias") is True and check_bool(False, "bias") is False
    for bad in (0, 1, "True", None, np.bool_(True)):
        message = refused(TypeError, lambda: check_bool(bad, "bias"), name="bias", value=bad)
        assert message == f"bias must be True or False, got {bad!r}"


@pytest.mark.parametrize("values, kwargs, expected", [
    ([0.5, 1, 2.0], {}, True),
    ((1.0,), {"above": 0}, True),
    ([0.0], {"above": 0}, False),  # above is exclusive
    ([1.0, float("nan")], {}, False),
    ([1.0, float("inf")], {}, False),
    ([1.0, True], {}, False),  # a bool is not a number here
    ([], {}, False),
    ("12", {}, False),  # a string is a sequence, but not of numbers
    (3.0, {}, False),
    ([1.0, 2.0], {"length": 3}, False),
    ([1.0, 2.0, 3.0], {"length": 3}, True),
])
def test_finite_numbers(values, kwargs, expected):
    assert finite_numbers(values, **kwargs) is expected
