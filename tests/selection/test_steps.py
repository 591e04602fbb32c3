"""The step protocol itself: run_steps, eager validation, empty steps, and a wrapper that interposes
steps on another model (what a cascade does) without changing a strategy's result."""
from __future__ import annotations

import numpy as np
import pytest

from blender_fast.selection.steps import Step, recorded, run_steps
from blender_fast.selection.strategies import select, select_steps
from blender_fast.selection.verbs import coin_flips, compare_steps, judge_steps, rank_steps

UTIL = np.array([0.3, 2.0, -1.0, 0.7, 1.1, -0.2, 0.0])


def score(step: Step) -> np.ndarray:
    rows = step.rows
    return (UTIL[rows[:, 1]] - UTIL[rows[:, 2]] + 0.01 * rows[:, 0]).astype(np.float32)


@pytest.mark.parametrize("strategy", ["bubble", "tournament", "full", "swiss", "knockout_rr", "adaptive"])
def test_select_is_run_steps_of_select_steps(strategy):
    ns = [7, 3, 5, 1]
    a = select(ns, 1, strategy, lambda rows: score(Step(rows)), seed=3)
    b = run_steps(select_steps(ns, 1, strategy, seed=3), score)
    assert [(s.top_k, s.comparisons, s.forward_passes, s.steps, s.log) for s in a] == \
           [(s.top_k, s.comparisons, s.forward_passes, s.steps, s.log) for s in b]
    assert a[0].top_k == [1]


def test_steps_say_their_group_and_default_model():
    gen = select_steps([4], 1, "tournament")
    step = next(gen)
    assert step.group == 2 and step.model == "default" and len(step.rows) % 2 == 0
    assert next(select_steps([4], 1, "tournament", orders="one")).group == 1


def test_arguments_are_checked_before_the_first_step():
    with pytest.raises(ValueError, match="initial_orders has 1 entries for 2 prompts"):
        select_steps([3, 3], 1, "bubble", initial_orders=[[0, 1, 2]])  # no next() needed
    with pytest.raises(ValueError, match="mode must be one of"):
        compare_steps(2, "[A]")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        judge_steps(1, [False], temperature=float("nan"))


def test_no_pairs_means_no_step_and_empty_steps_are_answered():
    assert run_steps(select_steps([1, 1], 1, "full"), lambda s: pytest.fail("no model call")) \
        [0].top_k == [0]
    assert run_steps(rank_steps([]), lambda s: pytest.fail("no model call")) == []

    def empty_then_one():
        out = yield Step(np.empty((0, 3), np.int64))
        assert out.shape == (0,)
        return (yield Step(np.array([[0, 0, 1]], np.int64)))

    assert run_steps(empty_then_one(), score).tolist() == pytest.approx([UTIL[0] - UTIL[1]])


def certified(inner):
    """A cascade-like wrapper: every step is scored by "default", then re-scored by "exact" (here the
    same numbers), and the exact logits are what the strategy sees."""
    try:
        step = next(inner)
        while True:
            yield step
            exact = yield Step(step.rows, group=step.group, model="exact")
            step = inner.send(exact)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("strategy", ["tournament", "full", "adaptive"])
def test_a_wrapper_may_interpose_steps_on_another_model(strategy):
    models = []

    def two_models(step):
        models.append(step.model)
        return score(step)

    plain = run_steps(select_steps([7, 5], 2, strategy), score)
    wrapped = run_steps(certified(select_steps([7, 5], 2, strategy)), two_models)
    assert [s.top_k for s in wrapped] == [s.top_k for s in plain]
    assert models[0::2] == ["default"] * (len(models) // 2) and models[1::2] == ["exact"] * (len(models) // 2)


def test_recorded_logs_every_step():
    log = []
    sels = run_steps(recorded(select_steps([5], 1, "full"), log), score)
    (rows, out), = log
    assert len(rows) == 20 and out.shape == (20,) and sels[0].top_k == [1]


def test_coin_flips_are_one_draw_per_pair():
    a = coin_flips(np.random.default_rng(4), 50)
    assert a.dtype == bool and a.tolist() == (np.random.default_rng(4).random(50) < 0.5).tolist()


def counted_rows(ns, top_k, strategy, orders="both", budget=None) -> int:
    """Model rows a selection really runs: its steps driven to the end (the plain twin of the cost model)."""
    rows = 0

    def count(step):
        nonlocal rows
        rows += len(step.rows)
        return score(step)

    run_steps(select_steps(ns, top_k, strategy, orders=orders, budget=budget), count)
    return rows


@pytest.mark.parametrize("strategy", ["full", "bubble", "tournament", "swiss", "knockout_rr", "adaptive"])
@pytest.mark.parametrize("orders", ["both", "one"])
def test_the_cost_model_bounds_the_rows_run(strategy, orders):
    """selection.budgets.selection_cost, the one cost model (the engine's queue bound, the CLI's progress):
    exact for full and bubble, an upper bound for the others, against the rows the steps run."""
    from blender_fast.selection.budgets import selection_cost

    for ns, k in (([7, 5], 2), ([2, 6, 1], 1), ([7], 3)):
        cost, ran = selection_cost(strategy, ns, k, orders), counted_rows(ns, k, strategy, orders)
        assert cost == ran if strategy in ("full", "bubble") else cost >= ran, (ns, k, cost, ran)


def test_one_top_k_rule():
    from blender_fast.options import check_top_k_fits

    assert check_top_k_fits(3, 3, "prompt 0") == 3
    with pytest.raises(ValueError, match=r"^top_k = 4 exceeds the 3 candidates of prompt 2$"):
        check_top_k_fits(4, 3, "prompt 2")
    with pytest.raises(ValueError, match="top_k = 4 exceeds the 3 candidates of prompt 1"):
        select_steps([5, 3], 4, "bubble")
    with pytest.raises(TypeError, match="top_k"):
        check_top_k_fits(2.0, 3, "prompt 0")
