"""Selection (_core.Selector and blender_fast.selection.strategies) against plain-Python twins."""
import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from blender_fast import _core
from blender_fast.selection.strategies import Selection, ranks_from_scores, scores_from_cmps, select
from conftest import STRICT


# -- twins ---------------------------------------------------------------------------------------

def decide(s, a, b):
    return a if s > 0 else b if s < 0 else min(a, b)


def bubble_twin(order, k, score):
    """Sequential k-round bubble sort; the log is returned in the pipelined (wavefront) order:
    round r's comparison at j runs in step j + 2r, rounds ascending within a step."""
    arr, n, log = list(order), len(order), []
    for r in range(min(k, n - 1)):
        for j in range(n - r - 1):
            a, b = arr[j], arr[j + 1]
            w = decide(score(a, b), a, b)
            log.append((j + 2 * r, r, (a, b, w)))
            if w == a:
                arr[j], arr[j + 1] = b, a
    log.sort(key=lambda e: e[:2])
    steps = log[-1][0] + 1 if log else 0
    return [arr[n - 1 - i] for i in range(k)], [e[2] for e in log], steps


def tournament_twin(order, k, score):
    """Knockout bracket built level by level (left to right), then replay of the winner's path."""
    n = len(order)
    size = 1 << max(0, (n - 1).bit_length())
    tree = [None] * (2 * size)
    tree[size:size + n] = list(order)
    leaf_of = {c: size + i for i, c in enumerate(order)}
    memo, log = {}, []

    def play(u):
        a, b = tree[2 * u], tree[2 * u + 1]
        if a is None or b is None:
            return b if a is None else a
        key = (min(a, b), max(a, b))
        if key not in memo:
            memo[key] = decide(score(a, b), a, b)
            log.append((a, b, memo[key]))
        return memo[key]

    level = size // 2
    while level >= 1:
        for u in range(level, 2 * level):
            tree[u] = play(u)
        level //= 2
    top = [tree[1]] if n > 1 else [order[0]]
    while len(top) < k:
        u = leaf_of[top[-1]]
        tree[u] = None
        u //= 2
        while u >= 1:
            tree[u] = play(u)
            u //= 2
        top.append(tree[1])
    return top, log


TWINS = {"bubble": lambda o, k, f: bubble_twin(o, k, f)[:2], "tournament": tournament_twin}


def drive(sel, score_rows):
    calls = 0
    while not sel.done():
        rows = sel.next()
        sel.feed(np.asarray(score_rows(rows), dtype=np.float64))
        calls += 1
    return calls


def log2ceil(n):
    return math.ceil(math.log2(n)) if n > 1 else 0


# -- (a) known total order, every starting permutation -------------------------------------------

@pytest.mark.parametrize("n", range(1, 8))
def test_exhaustive_permutations_total_order(n):
    util = np.random.default_rng(n).permutation(n).astype(np.float64) * 1.5 - 2.0
    best = np.argsort(-util).tolist()
    perms = [np.array(p, dtype=np.int64) for p in itertools.permutations(range(n))]
    P = len(perms)
    score = lambda rows: util[rows[:, 1]] - util[rows[:, 2]]
    for k in range(1, n + 1):
        for strategy in ("bubble", "tournament"):
            sel = _core.Selector(np.full(P, n, dtype=np.int64), k, strategy, perms)
            drive(sel, score)
            for p in range(P):
                assert sel.top_k(p) == best[:k], (strategy, k, perms[p])
                c, s = sel.comparisons(p), sel.steps(p)
                if strategy == "bubble":
                    assert c == k * (2 * n - k - 1) // 2
                    # The k-th round is empty when k == n, hence min(k, n-1).
                    assert s == (n + min(k, n - 1) - 2 if n >= 2 else 0)
                elif k == 1:
                    assert c == n - 1 and s == log2ceil(n)
                else:
                    assert c <= (n - 1) + (k - 1) * log2ceil(n)
                    assert s <= log2ceil(n) + (k - 1) * log2ceil(n)


# -- (b) noisy / intransitive comparators against the twins --------------------------------------

@st.composite
def ragged_problem(draw, max_n=40, max_prompts=6):
    ns = draw(st.lists(st.integers(1, max_n), min_size=1, max_size=max_prompts))
    k = draw(st.integers(1, min(ns)))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    # Small integers: plenty of exact ties (score 0) and cycles.
    tables = [rng.integers(-3, 4, (n, n)).astype(np.float64) for n in ns]
    orders = [rng.permutation(n) for n in ns]
    return ns, k, tables, orders


def table_compare(tables, calls):
    def compare(rows):
        calls.append(rows.copy())
        return np.array([tables[p][a, b] for p, a, b in rows], dtype=np.float32)
    return compare


@settings(max_examples=150, deadline=None)
@given(ragged_problem(), st.sampled_from(["bubble", "tournament"]), st.sampled_from(["both", "one"]))
def test_ragged_noisy_matches_twins(prob, strategy, orders):
    check_ragged(*prob, strategy, orders)


@pytest.mark.parametrize("strategy", ["bubble", "tournament"])
@pytest.mark.parametrize("ns, k", [([40, 33, 17, 2, 1], 1), ([40, 37, 25, 16], 10), ([9, 12, 40], 9)])
def test_ragged_fixed_cases(ns, k, strategy):
    rng = np.random.default_rng(len(ns) * 100 + k)
    tables = [rng.normal(size=(n, n)) for n in ns]
    check_ragged(ns, k, tables, [rng.permutation(n) for n in ns], strategy, "both")


def check_ragged(ns, k, tables, inits, strategy, orders):
    calls = []
    sels = select(ns, k, strategy, table_compare(tables, calls), orders=orders, initial_orders=inits)
    per_row = 2 if orders == "both" else 1
    assert len(calls) == max(s.steps for s in sels)
    for rows in calls:
        if orders == "both":  # (a,b) and (b,a) adjacent
            assert np.array_equal(rows[1::2], rows[0::2][:, [0, 2, 1]])
    for p, (n, t, s) in enumerate(zip(ns, tables, sels)):
        f = (lambda a, b: t[a, b] - t[b, a]) if orders == "both" else (lambda a, b: t[a, b])
        top, log = TWINS[strategy](inits[p].tolist(), k, f)
        assert s.top_k == top and s.log == log
        assert s.comparisons == len(log) and s.forward_passes == per_row * s.comparisons
        # A prompt is in every compare call until it finishes, then never again.
        seen = [bool((rows[:, 0] == p).any()) for rows in calls]
        assert seen == [True] * s.steps + [False] * (len(calls) - s.steps)
        assert sum(int((rows[:, 0] == p).sum()) for rows in calls) == s.forward_passes
        if strategy == "bubble":
            assert s.comparisons == k * (2 * n - k - 1) // 2
            assert s.steps == (n + min(k, n - 1) - 2 if n >= 2 else 0)
            assert s.steps == bubble_twin(inits[p].tolist(), k, f)[2]
        else:
            assert s.comparisons <= (n - 1) + (k - 1) * log2ceil(n)
            if k == 1:
                assert s.comparisons == n - 1 and s.steps == log2ceil(n)


def test_default_initial_orders_are_seeded_per_n():
    ns = [5, 8, 5]
    tables = [np.random.default_rng(n).normal(size=(n, n)) for n in ns]
    sels = select(ns, 2, "bubble", table_compare(tables, []), seed=3)
    expect = [np.random.default_rng(3).permutation(n) for n in ns]
    again = select(ns, 2, "bubble", table_compare(tables, []), initial_orders=expect)
    assert [s.log for s in sels] == [s.log for s in again]
    assert sels[0].log[0][:2] == tuple(expect[0][:2])
    # Batching does not change a prompt's result.
    alone = select([8], 2, "bubble", table_compare([tables[1]], []), seed=3)
    assert alone[0].log == sels[1].log


def test_worst_of_n_by_negating():
    util = np.array([0.3, -1.0, 2.0, 0.5])
    for strategy in ("bubble", "tournament"):
        worst = select([4], 2, strategy, lambda r: -(util[r[:, 1]] - util[r[:, 2]]))
        assert worst[0].top_k == [1, 0]


# -- (d) full and llm-blender aggregation --------------------------------------------------------

def _llm_blender_utils():
    # Load the module file directly: importing the llm_blender package pulls in torch (seconds).
    spec = importlib.util.find_spec("llm_blender")
    if spec is None:
        if STRICT:
            pytest.fail("llm_blender is required in CI but is not installed")
        pytest.skip("llm_blender is not installed")
    path = Path(spec.submodule_search_locations[0]) / "gpt_eval" / "utils.py"
    mspec = importlib.util.spec_from_file_location("_llm_blender_gpt_eval_utils", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("orders", ["both", "one"])
@pytest.mark.parametrize("policy", ["max_logits", "max_wins"])
def test_full_matches_aggregation(orders, policy):
    rng = np.random.default_rng(7)
    ns = [1, 2, 5, 9, 5, 2]
    tables = [rng.normal(size=(n, n)).astype(np.float32) for n in ns]
    tables[2][:] = np.round(tables[2])  # ties
    calls = []
    sels = select(ns, 1, "full", table_compare(tables, calls), orders=orders, policy=policy)
    assert len(calls) == 1
    if orders == "both":
        assert np.array_equal(calls[0][1::2], calls[0][0::2][:, [0, 2, 1]])
    for n, t, s in zip(ns, tables, sels):
        m = np.zeros((n, n), dtype=np.float32)
        for a in range(n):
            for b in range(n):
                if a < b or (a > b and orders == "both"):
                    m[a, b] = t[a, b]
                elif a > b:
                    m[a, b] = -t[b, a]
        assert s.scores.dtype == np.float32
        np.testing.assert_array_equal(s.scores, scores_from_cmps(m, policy))
        assert s.top_k == [int(np.argsort(-s.scores, kind="stable")[0])]
        pairs = n * (n - 1) // 2
        assert s.comparisons == pairs and s.forward_passes == pairs * (2 if orders == "both" else 1)
        assert s.steps == (1 if n > 1 else 0) and s.log == []
    full_k = select([5], 5, "full", table_compare([tables[2]], []), orders=orders, policy=policy)[0]
    assert full_k.top_k == np.argsort(-full_k.scores, kind="stable").tolist()


@pytest.mark.reference
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.sampled_from([np.float32, np.float64]),
       st.booleans(), st.integers(0, 2**31))
def test_scores_and_ranks_match_llm_blender(b, c, dtype, ties, seed):
    ref = _llm_blender_utils()
    rng = np.random.default_rng(seed)
    cmp = (rng.integers(-2, 3, (b, c, c)) if ties else rng.normal(size=(b, c, c)) * 3).astype(dtype)
    for policy in ("max_logits", "max_wins"):
        theirs = ref.get_scores_from_cmps(cmp, policy)
        ours = scores_from_cmps(cmp, policy)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(scores_from_cmps(cmp[0], policy), theirs[0])
        np.testing.assert_array_equal(ranks_from_scores(ours), ref.get_ranks_from_scores(theirs))
        np.testing.assert_array_equal(ranks_from_scores(ours[0]), ref.get_ranks_from_scores(theirs[0]))
    raw = rng.integers(0, 3, (b, c)).astype(dtype)  # heavy ties
    r = ranks_from_scores(raw)
    assert r.dtype == np.int32
    np.testing.assert_array_equal(r, ref.get_ranks_from_scores(raw))


@pytest.mark.reference
def test_full_scores_match_llm_blender_on_the_same_matrix():
    ref = _llm_blender_utils()
    t = np.random.default_rng(3).normal(size=(6, 6)).astype(np.float32)
    s = select([6], 6, "full", table_compare([t], []))[0]
    m = t.copy()
    np.fill_diagonal(m, 0)
    np.testing.assert_array_equal(s.scores, ref.get_scores_from_cmps(m[None])[0])
    np.testing.assert_array_equal(ranks_from_scores(s.scores), ref.get_ranks_from_scores(s.scores))


def test_ranks_example():
    assert ranks_from_scores([0.5, 2.0, 0.5, -1.0]).tolist() == [2, 1, 2, 4]
    assert ranks_from_scores(np.array([[1, 1], [3, 2]])).tolist() == [[1, 1], [1, 2]]
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores([1.0, np.nan])


# -- (e) errors and edge cases -------------------------------------------------------------------

def _util_compare(rows):
    return (rows[:, 1] - rows[:, 2]).astype(np.float64)


@pytest.mark.parametrize("strategy", ["bubble", "tournament", "full"])
def test_single_candidate(strategy):
    calls = []
    s = select([1, 1], 1, strategy, table_compare([np.zeros((1, 1))] * 2, calls))
    assert [x.top_k for x in s] == [[0], [0]] and calls == []
    assert all(x.comparisons == x.forward_passes == x.steps == 0 for x in s)


@pytest.mark.parametrize("args, kw, msg", [
    (([3, 2], 3, "bubble"), {}, "top_k = 3 exceeds the 2 candidates of prompt 1"),
    (([3], 0, "bubble"), {}, "top_k must be >= 1"),
    (([3, 0], 1, "tournament"), {}, "prompt 1 has 0 candidates"),
    (([3], 1, "quick"), {}, "strategy must be one of"),
    (([3], 1, "bubble"), {"orders": "three"}, "orders must be one of"),
    (([3], 1, "full"), {"policy": "borda"}, "policy must be one of"),
    (([3], 1, "bubble"), {"initial_orders": [[0, 1, 1]]}, "not a permutation"),
    (([3], 1, "bubble"), {"initial_orders": [[0, 1]]}, "initial_orders\\[0\\] has length 2"),
    (([3, 3], 1, "bubble"), {"initial_orders": [[0, 1, 2]]}, "1 entries for 2 prompts"),
])
def test_select_errors(args, kw, msg):
    with pytest.raises(ValueError, match=msg):
        select(*args[:3], _util_compare, **kw)


@pytest.mark.parametrize("strategy", ["bubble", "tournament", "full"])
@pytest.mark.parametrize("orders", ["both", "one"])
def test_compare_output_errors(strategy, orders):
    def nan_for_prompt_2(rows):
        out = _util_compare(rows)
        out[rows[:, 0] == 2] = np.nan
        return out

    with pytest.raises(ValueError, match="NaN on prompt 2: the model is at fault"):
        select([3, 4, 5], 1, strategy, nan_for_prompt_2, orders=orders)
    with pytest.raises(ValueError, match="compare returned shape"):
        select([3, 4], 1, strategy, lambda rows: np.zeros((len(rows), 1)), orders=orders)


def test_selector_protocol_errors():
    sel = _core.Selector(np.array([3, 4], dtype=np.int64), 1, "bubble", [np.arange(3), np.arange(4)])
    with pytest.raises(ValueError, match="without a pending next"):
        sel.feed(np.zeros(0))
    rows = sel.next()
    assert rows.tolist() == [[0, 0, 1], [1, 0, 1]]
    with pytest.raises(ValueError, match="before feed"):
        sel.next()
    with pytest.raises(ValueError, match="expected 2 scores"):
        sel.feed(np.zeros(3))
    with pytest.raises(ValueError, match="dtype float64"):
        sel.feed(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN for prompt 1, candidates 0 vs 1"):
        sel.feed(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="not finished"):
        sel.top_k(0)
    with pytest.raises(ValueError, match="out of range"):
        sel.steps(5)
    sel.feed(np.array([0.0, -0.0]))  # ties: lower index wins; a rejected feed left the state intact
    assert sel.log(0) == [(0, 1, 0)] and sel.log(1) == [(0, 1, 0)]
    drive(sel, lambda r: np.ones(len(r)))
    assert sel.next().shape == (0, 3)
    with pytest.raises(ValueError, match="strategy must be"):
        _core.Selector(np.array([3]), 1, "full", [np.arange(3)])
    with pytest.raises(ValueError, match="n_candidates must have dtype int64"):
        _core.Selector(np.array([3.0]), 1, "bubble", [np.arange(3)])
    with pytest.raises(ValueError, match="initial_orders\\[0\\] must have dtype int64"):
        _core.Selector(np.array([3]), 1, "bubble", [np.arange(3, dtype=np.int32)])


def test_selection_dataclass_shape():
    s = select([4], 2, "tournament", _util_compare, orders="one")[0]
    assert isinstance(s, Selection) and s.scores is None
    assert s.top_k == [3, 2] and s.forward_passes == s.comparisons
    assert all(isinstance(x, int) for x in s.top_k)


# -- (f) budgeted strategies: swiss, knockout_rr, adaptive -----------------------------------------

import budget_twins  # noqa: E402  (tests/ is on sys.path, as conftest is)

BUDGETED = ("swiss", "knockout_rr", "adaptive")


def all_pairs(n):
    return n * (n - 1) // 2


def swiss_condorcet_budget(n):
    """Comparisons after which swiss always returns a Condorcet winner: ceil(log2 n) uncut rounds of at
    most floor(n/2) pairs. Unbeaten candidates rank first and have never met, so each round pairs them
    off and halves their number (rounded up); after ceil(log2 n) rounds one is left, and a Condorcet
    winner never loses, so it is that one, and swiss picks the only unbeaten candidate first."""
    return log2ceil(n) * (n // 2)


@settings(max_examples=120, deadline=None)
@given(ragged_problem(max_n=16), st.sampled_from(BUDGETED), st.sampled_from(["both", "one"]), st.data())
def test_budgeted_match_twins(prob, strategy, orders, data):
    ns, k, tables, inits = prob
    per_row = 2 if orders == "both" else 1
    need = max(budget_twins.min_budget(strategy, n, k) for n in ns)
    passes = data.draw(st.integers(max(1, need * per_row), (max(all_pairs(n) for n in ns) + 2) * per_row + 1))
    calls = []
    sels = select(ns, k, strategy, table_compare(tables, calls), orders=orders, initial_orders=inits, budget=passes)
    assert len(calls) == max(s.steps for s in sels)
    for p, (t, s) in enumerate(zip(tables, sels)):
        f = (lambda a, b: t[a, b] - t[b, a]) if orders == "both" else (lambda a, b: t[a, b])
        top, log, steps = budget_twins.TWINS[strategy](inits[p].tolist(), k, passes // per_row, f)
        assert (s.top_k, s.log, s.steps) == (top, log, steps)
        assert s.forward_passes == per_row * s.comparisons <= passes
        assert len({tuple(sorted(e[:2])) for e in s.log}) == len(s.log)  # no pair is compared twice
        assert sum(int((rows[:, 0] == p).sum()) for rows in calls) == s.forward_passes


def tournaments(n, limit=None, seed=0):
    """Outcome matrices of every tournament on n players (2^(n(n-1)/2)), or `limit` random ones, as
    margin tables t[a, b] = -t[b, a] with random magnitudes: sign = who wins, size = by how much."""
    a, b = np.triu_indices(n, 1)
    m = len(a)
    codes = np.arange(2 ** m) if limit is None else np.random.default_rng(seed).integers(0, 2 ** m, limit)
    bits = (codes[:, None] >> np.arange(m)) & 1
    mag = np.random.default_rng(seed + 1).uniform(0.1, 3.0, (len(codes), m))
    t = np.zeros((len(codes), n, n))
    t[:, a, b] = np.where(bits == 1, mag, -mag)
    t[:, b, a] = -t[:, a, b]
    return t


def condorcet(t):
    """Per tournament: the candidate that beats every other, or -1."""
    n = t.shape[1]
    beats = (t > 0).sum(axis=2)
    return np.where((beats == n - 1).any(axis=1), np.argmax(beats, axis=1), -1)


def run_tables(t, k, strategy, budget, orders=None, one_order=True):
    """Every tournament of t as one prompt of one Selector (the batched path)."""
    P, n = t.shape[:2]
    if orders is None:
        orders = np.argsort(np.random.default_rng(P * n).random((P, n)), axis=1)
    sel = _core.Selector(np.full(P, n, dtype=np.int64), k, strategy, list(np.asarray(orders, dtype=np.int64)),
                         np.full(P, budget, dtype=np.int64))
    drive(sel, lambda rows: t[rows[:, 0], rows[:, 1], rows[:, 2]])
    return sel


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_condorcet_winner_every_tournament(n):
    """knockout_rr returns the Condorcet winner at every budget (it never loses a knockout match, and is
    the round robin's Condorcet winner, which is picked first); swiss does from swiss_condorcet_budget(n)
    comparisons on; adaptive, like full ranking, follows the margins and guarantees it only when every
    margin has the same size (its ratings are then Copeland scores) and the budget covers every pair. Every tournament for n <= 6,
    5000 random ones for n = 7; the budgets: the minimum, each first budget of a new knockout_rr
    survivor count, swiss's bound and every pair."""
    t = tournaments(n, limit=5000 if n == 7 else None, seed=n)
    cw = condorcet(t)
    has = np.flatnonzero(cw >= 0)
    assert len(has) > 0
    budgets = {n - 1, swiss_condorcet_budget(n), all_pairs(n)}
    budgets |= {n - m + all_pairs(m) for m in range(1, n + 1) if n - m + all_pairs(m) <= all_pairs(n)}
    for budget in sorted(budgets):
        sel = run_tables(t, 1, "knockout_rr", budget)
        assert all(sel.top_k(p)[0] == cw[p] for p in has), ("knockout_rr", budget)
        sel = run_tables(t, 1, "swiss", budget)
        picks = np.array([sel.top_k(p)[0] for p in has])
        if budget >= swiss_condorcet_budget(n):
            assert (picks == cw[has]).all(), ("swiss", budget)
        else:  # whenever swiss ends with a single unbeaten candidate, that is the Condorcet winner
            for p in has[picks != cw[has]]:
                assert len({a if w == b else b for a, b, w in sel.log(p)}) < n - 1
    sign = np.sign(t)
    sel = run_tables(sign, 1, "adaptive", all_pairs(n))
    assert all(sel.top_k(p)[0] == cw[p] for p in has)


def test_swiss_below_its_condorcet_budget_can_miss():
    """The bound is needed: with fewer rounds two candidates can stay unbeaten, and the rating (margin)
    tie-break may then prefer the one that is not the Condorcet winner."""
    n = 6
    t = tournaments(n, seed=6)
    cw = condorcet(t)
    has = np.flatnonzero(cw >= 0)
    sel = run_tables(t, 1, "swiss", swiss_condorcet_budget(n) - 3)
    assert any(sel.top_k(p)[0] != cw[p] for p in has)


@pytest.mark.parametrize("strategy", BUDGETED)
def test_budget_never_exceeded_every_budget(strategy):
    n = 7
    t = tournaments(n, limit=300, seed=1)
    for k in (1, 2, 3, 7):
        for budget in range(budget_twins.min_budget(strategy, n, k), all_pairs(n) + 3):
            sel = run_tables(t, k, strategy, budget)
            for p in range(len(t)):
                assert sel.comparisons(p) <= min(budget, all_pairs(n))
                assert len(sel.top_k(p)) == k and len(set(sel.top_k(p))) == k
                # steps are rounds, each with at least one comparison
                assert 1 <= sel.steps(p) <= sel.comparisons(p)


@pytest.mark.parametrize("strategy", BUDGETED)
def test_batching_does_not_change_picks(strategy):
    rng = np.random.default_rng(11)
    ns = [12, 7, 12, 3, 9, 12, 1, 5]
    tables = [rng.normal(size=(n, n)) for n in ns]
    inits = [rng.permutation(n) for n in ns]
    k, budget = 1, 40

    def run(idx):
        return select([ns[i] for i in idx], k, strategy, table_compare([tables[i] for i in idx], []),
                      initial_orders=[inits[i] for i in idx], budget=budget)

    together = run(range(len(ns)))
    alone = [run([i])[0] for i in range(len(ns))]
    perm = rng.permutation(len(ns))
    shuffled = run(perm)
    for i in range(len(ns)):
        assert together[i].top_k == alone[i].top_k
        assert together[i].log == alone[i].log and together[i].steps == alone[i].steps
        assert shuffled[list(perm).index(i)].log == together[i].log
    # Default arrangements depend only on (seed, n), not on the batch either.
    a = select(ns, 1, strategy, table_compare(tables, []), seed=5, budget=budget)
    b = select(ns[::-1], 1, strategy, table_compare(tables[::-1], []), seed=5, budget=budget)
    assert [s.log for s in a] == [s.log for s in b[::-1]]


@pytest.mark.parametrize("strategy", BUDGETED)
def test_budgeted_ties_go_to_the_lower_index(strategy):
    """A comparator that always says 0: every comparison goes to the lower index (as for bubble and
    tournament), and so does every rating tie; candidate 0 wins from any arrangement."""
    for n in (2, 5, 8):
        for seed in range(5):
            order = np.random.default_rng(seed).permutation(n)
            s = select([n], 1, strategy, lambda rows: np.zeros(len(rows)), initial_orders=[order],
                       budget=4 * (n - 1))[0]
            assert s.top_k == [0]
            assert all(w == min(a, b) for a, b, w in s.log)


def test_budgeted_find_the_best_of_a_total_order():
    n = 12
    util = np.random.default_rng(3).normal(size=n)
    best = np.argsort(-util).tolist()
    for strategy in BUDGETED:
        for k in (1, 2, 3):
            s = select([n], k, strategy, lambda r: util[r[:, 1]] - util[r[:, 2]], budget=60, seed=k)[0]
            assert s.top_k[0] == best[0], strategy
            assert s.top_k == best[:k], strategy


def test_budget_defaults_and_counts():
    # default: 2(n-1) comparisons = 4(n-1) passes with orders="both"
    for strategy in BUDGETED:
        s = select([12], 1, strategy, _util_compare)[0]
        assert s.forward_passes <= 44 and s.comparisons <= 22
        one = select([12], 1, strategy, _util_compare, orders="one")[0]
        assert one.forward_passes == one.comparisons <= 22
    ko = select([12], 1, "knockout_rr", _util_compare, budget=44)[0]
    assert ko.comparisons == 6 + 15 and ko.steps == 2  # 12 -> 6 survivors, then their round robin
    assert select([12], 3, "knockout_rr", _util_compare)[0].comparisons <= 22
    assert select([12], 12, "knockout_rr", _util_compare)[0].comparisons == all_pairs(12)  # min for k = n
    # An odd budget with both orders leaves one pass unused; all pairs is the most any strategy plays.
    for strategy in BUDGETED:
        s = select([6], 1, strategy, _util_compare, budget=10**6)[0]
        assert s.comparisons <= all_pairs(6)
    s = select([12], 1, "adaptive", _util_compare, budget=45)[0]
    assert s.forward_passes <= 44


@pytest.mark.parametrize("kw, msg", [
    ({"strategy": "swiss", "budget": 21}, r"budget = 21 forward passes is below the minimum of 22 that "
                                          r"strategy='swiss' needs for top_k = 1 of the 12 candidates of prompt 0"),
    ({"strategy": "adaptive", "budget": 10, "orders": "one"}, r"minimum of 11 .*orders='one'"),
    ({"strategy": "knockout_rr", "budget": 22, "top_k": 3},
     r"minimum of 24 that strategy='knockout_rr' needs for top_k = 3"),
    ({"strategy": "swiss", "budget": 30.5}, r"budget must be an integer, got 30.5"),
    ({"strategy": "swiss", "budget": "44"}, r"budget must be an integer"),
    ({"strategy": "adaptive", "budget": -4}, r"budget must be >= 1, got -4"),
    ({"strategy": "tournament", "budget": 44}, r"budget applies to the strategies .* not to strategy='tournament'"),
    ({"strategy": "full", "budget": 44}, r"budget applies to"),
])
def test_budget_errors(kw, msg):
    kw = {"top_k": 1, **kw}
    with pytest.raises(ValueError, match=msg):
        select([12], kw.pop("top_k"), kw.pop("strategy"), _util_compare, **kw)


def test_budgeted_selector_errors():
    o = [np.arange(4)]
    with pytest.raises(ValueError, match="needs a budget per prompt"):
        _core.Selector(np.array([4]), 1, "swiss", o)
    with pytest.raises(ValueError, match="not to 'bubble'"):
        _core.Selector(np.array([4]), 1, "bubble", o, np.array([5]))
    with pytest.raises(ValueError, match="budget = 2 comparisons for prompt 0 is below the 3"):
        _core.Selector(np.array([4]), 1, "adaptive", o, np.array([2]))
    assert _core.min_budget("knockout_rr", 12, 3) == 12 - 3 + 3 and _core.min_budget("swiss", 1, 1) == 0
    sel = _core.Selector(np.array([4]), 1, "adaptive", o, np.array([6]))
    assert sel.strategy == "adaptive"
    sel.next()
    with pytest.raises(ValueError, match="infinite for prompt 0"):
        sel.feed(np.array([np.inf, 1.0]))
# -- one top-k rule, one vocabulary ----------------------------------------------------------------

def test_top_k_from_scores_ties_go_to_the_lower_index():
    from blender_fast.selection.strategies import top_k_from_scores

    assert top_k_from_scores([0.5, 2.0, 2.0, -1.0, 2.0], 3) == [1, 2, 4]
    assert top_k_from_scores(np.array([1, 1, 1], dtype=np.float32)) == [0, 1, 2]
    assert top_k_from_scores([3.0, 1.0, 2.0], 10) == [0, 2, 1]
    with pytest.raises(ValueError, match="NaN"):
        top_k_from_scores([1.0, float("nan")], 1)


def test_facade_top_k_uses_the_same_rule():
    from blender_fast.blender import topk_from_ranks

    # tied ranks: the lower index first, as top_k_from_scores on -ranks
    assert topk_from_ranks([[2, 1, 1, 3]], [["a", "b", "c", "d"]], 2) == [["b", "c"]]
    assert topk_from_ranks([[2, 1, 1, 3]], [["a", "b", "c", "d"]], None) == [["b", "c", "a", "d"]]


def test_selector_strategy_error_lists_the_vocabulary():
    from blender_fast.options import SELECTOR_STRATEGIES, STRATEGIES, check_choice

    assert set(SELECTOR_STRATEGIES) <= set(STRATEGIES)
    with pytest.raises(ValueError) as native:
        _core.Selector(np.array([3]), 1, "quick", [np.arange(3)])
    with pytest.raises(ValueError) as python:
        check_choice("strategy", "quick", SELECTOR_STRATEGIES)
    assert str(native.value) == str(python.value)


def test_select_rejects_bad_seed_and_top_k():
    cmp = lambda rows: np.ones(len(rows))  # noqa: E731
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        select([3], 1, "bubble", cmp, seed=-1)
    for seed in (1.5, None, True):
        with pytest.raises(TypeError, match="seed must be an integer"):
            select([3], 1, "bubble", cmp, seed=seed)
    for top_k in (float("nan"), 1.5, 2.0, None, "1", True):
        with pytest.raises(TypeError, match="top_k must be an integer"):
            select([3], top_k, "bubble", cmp)
    with pytest.raises(ValueError, match="top_k must be <= 1000000, got 10{30}"):
        select([3], 10**30, "bubble", cmp)
