"""The chooser times candidates once per key and keeps the fastest; its settings hold for a block."""

import math
import threading
import time

import pytest
import torch

from atrous.ops import TuningSettings, tuning_settings
from atrous.ops.autotune import Chooser, autotune, current_settings, timed_call

CPU = torch.device("cpu")


def _fake_run(costs: dict[str, float], clock):
    def run(name):
        clock.now += costs[name]

    return run


@pytest.mark.parametrize(
    ("costs", "winner"),
    [
        ({"native": 3.0, "pad": 2.0, "gemm": 1.0}, "gemm"),
        ({"native": 1.0, "pad": 2.0, "gemm": 3.0}, "native"),
        ({"native": 1.0, "pad": 0.99, "gemm": 3.0}, "native"),  # within the margin: keep the default
    ],
)
def test_chooser_picks_the_lowest_median(clock, costs, winner):
    chooser = Chooser()
    with tuning_settings(budget_s=100.0, min_rounds=3, max_rounds=3):
        assert chooser.choose("key", list(costs), _fake_run(costs, clock), CPU) == winner
    assert chooser.cache == {"key": winner}


@pytest.mark.parametrize(("cost", "calls"), [(1.0, 1 + 1), (3.9e-3, 1 + 3), (0.7e-3, 1 + 7), (1e-6, 1 + 10)])
def test_chooser_budget_bounds_the_rounds(clock, cost, calls):
    # A warm-up, then one round when a call is slower than the budget; otherwise at least
    # min_rounds (3) rounds and more until the budget (0.01 s; a call costs cost + 1e-4 on this
    # clock) or max_rounds (10) is reached.
    costs = {"native": cost, "pad": cost}
    with tuning_settings(budget_s=0.01, min_rounds=3, max_rounds=10):
        Chooser().choose("key", list(costs), _fake_run(costs, clock), CPU)
    assert clock.reads == 2 * 2 * calls  # two candidates, two clock reads per call


def test_a_slow_first_call_does_not_decide(clock):
    # The default's first call builds its kernels (10x slower); the warm-up absorbs that.
    calls = {"native": 0, "pad": 0}

    def run(name):
        calls[name] += 1
        clock.now += {"native": 10.0 if calls[name] == 1 else 1.0, "pad": 1.2}[name]

    with tuning_settings(budget_s=0.5, min_rounds=3, max_rounds=7):
        assert Chooser().choose("key", ["native", "pad"], run, CPU) == "native"


def test_chooser_skips_a_candidate_that_fails(clock):
    def run(name):
        if name == "gemm":
            raise RuntimeError("not implemented for this dtype")

    with tuning_settings(max_rounds=1):
        assert Chooser().choose("key", ["native", "gemm"], run, CPU) == "native"


def test_max_keys_stops_timing_new_keys(clock):
    chooser = Chooser()
    costs = {"native": 2.0, "pad": 1.0}
    with tuning_settings(max_keys=1):
        assert chooser.choose("first", list(costs), _fake_run(costs, clock), CPU) == "pad"
        reads = clock.reads
        assert chooser.choose("second", list(costs), _fake_run(costs, clock), CPU) == "native"
    assert clock.reads == reads and list(chooser.cache) == ["first"]


def test_a_replayed_choice_is_taken_without_timing(clock):
    chooser = Chooser(preset={repr(("conv", 1)): "pad"})
    assert chooser.choose(("conv", 1), ["native", "pad"], _fake_run({"native": 1.0, "pad": 2.0}, clock), CPU) == "pad"
    assert clock.reads == 0


def test_autotune_builds_candidates_only_on_a_miss(clock):
    built = []

    def candidates():
        built.append(1)
        return {"native": lambda: None, "pad": lambda: None}

    first = autotune("key", candidates, CPU)
    assert autotune("key", candidates, CPU) == first and len(built) == 1
    assert autotune("alone", lambda: {"native": lambda: None}, CPU) == "native"  # one candidate: nothing to time


def test_settings_hold_for_the_block_nest_and_come_back():
    before = current_settings()
    assert before == TuningSettings()
    with tuning_settings(min_macs=0, budget_s=2.0) as outer:
        assert current_settings() is outer and (outer.min_macs, outer.budget_s) == (0, 2.0)
        with tuning_settings(timer=time.thread_time):
            inner = current_settings()
            assert (inner.min_macs, inner.budget_s, inner.timer) == (0, 2.0, time.thread_time)
        assert current_settings() is outer
    assert current_settings() == before


def test_settings_come_back_after_an_error():
    before = current_settings()
    with pytest.raises(KeyError), tuning_settings(min_macs=0):
        raise KeyError("inside the block")
    assert current_settings() == before


def test_settings_are_local_to_a_thread():
    seen = []
    with tuning_settings(min_macs=0):
        thread = threading.Thread(target=lambda: seen.append(current_settings().min_macs))
        thread.start()
        thread.join()
    assert seen == [TuningSettings().min_macs]


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    [
        ({"min_macs": -1}, ValueError, r"min_macs must be an int >= 0, got -1"),
        ({"min_macs": 1.5}, TypeError, r"min_macs must be an int"),
        ({"min_rounds": 0}, ValueError, r"min_rounds must be an int >= 1"),
        ({"max_rounds": 2}, ValueError, r"max_rounds must be an int >= min_rounds=3, got 2"),
        # max_rounds was never passed: the message says where 7 comes from and what to do
        ({"min_rounds": 10}, ValueError, r"min_rounds=10 exceeds the current max_rounds \(7\); pass max_rounds too"),
        ({"budget_s": True}, TypeError, r"budget_s must be a finite number >= 0, got True"),
        ({"budget_s": math.inf}, ValueError, r"budget_s must be a finite number >= 0, got inf"),
        ({"margin": 1.0}, ValueError, r"margin must be a finite number >= 0 and < 1, got 1.0"),
        ({"max_keys": True}, TypeError, r"max_keys must be an int >= 0, got True"),
        ({"timer": 3}, TypeError, r"timer must be a callable"),
    ],
)
def test_bad_settings_are_refused_and_change_nothing(changes, error, pattern):
    before = current_settings()
    with pytest.raises(error, match=pattern), tuning_settings(**changes):
        pass
    assert current_settings() == before
    with pytest.raises(TypeError, match="unexpected keyword argument 'min_mac'"), tuning_settings(min_mac=0):
        pass


def test_timed_call_leaves_the_graph_grads_and_rng_alone():
    torch.manual_seed(0)
    x = torch.randn(3, 4, requires_grad=True)
    weight = torch.randn(4, 2, requires_grad=True)
    param = torch.randn(2, requires_grad=True)
    seen = []

    def forward(x, weight):
        seen.append(x.requires_grad)
        return torch.nn.functional.dropout(x @ weight + param, 0.5)

    call = timed_call(forward, (x, weight), (True, False), params=(param,))
    state = torch.get_rng_state()
    call()
    assert torch.equal(torch.get_rng_state(), state)  # the real call draws the same dropout mask
    assert x.grad is None and weight.grad is None and param.grad is None and seen == [True]
    with torch.no_grad():
        timed_call(forward, (x, weight), (False, False))()
    assert seen == [True, False]
