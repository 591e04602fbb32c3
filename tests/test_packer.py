"""_core.PairPacker against a plain-Python twin."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from blender_fast import _core

CAND1, CAND2, PAD = 7001, 7002, 0


# -- the twin ------------------------------------------------------------------------------------

def eff_piece(tokens, offsets, limits, t):
    piece = [int(x) for x in tokens[offsets[t]:offsets[t + 1]]]
    if len(piece) > limits[t]:
        piece = piece[:limits[t] - 1] + [piece[-1]]
    return piece


def twin_row(tokens, offsets, limits, po, row):
    src, a, b = (eff_piece(tokens, offsets, limits, t) for t in row)
    a[po] = CAND1
    b[po] = CAND2
    return src + a + b, [po, len(src) + po, len(src) + len(a) + po]


def twin_build(tokens, offsets, limits, po, pairs, rows):
    seqs = [twin_row(tokens, offsets, limits, po, pairs[r]) for r in rows]
    T = max((len(s) for s, _ in seqs), default=0)
    ids = [s + [PAD] * (T - len(s)) for s, _ in seqs]
    mask = [[1] * len(s) + [0] * (T - len(s)) for s, _ in seqs]
    pos = [p for _, p in seqs]
    return ids, mask, pos, sum(T - len(s) for s, _ in seqs)


def twin_group_lengths(lens, g):
    return [max(lens[i * g:(i + 1) * g]) for i in range(len(lens) // g)]


def width(L, budget, maxb, g):
    return max(1, min(maxb // g, budget // max(L, 1) // g))


def greedy_cut(L, budget, maxb, g):
    """Ascending greedy: add groups while the batch stays feasible."""
    cuts, start = [], 0
    for i in range(1, len(L) + 1):
        if i - start > width(L[i - 1], budget, maxb, g):
            cuts.append(i - 1)
            start = i - 1
    if L:
        cuts.append(len(L))
    return cuts


def greedy_cut_desc(L, budget, maxb, g):
    """Descending greedy (each batch capped by its first, longest group), mapped back to ascending ends."""
    n, ends, i = len(L), [], len(L)
    while i > 0:
        j = i - 1
        while j > 0 and i - (j - 1) <= width(L[i - 1], budget, maxb, g):
            j -= 1
        ends.append(i)
        i = j
    return sorted(ends)


def cost(L, cuts):
    """Computed tokens per group row (rows*longest / group_size) of a cut of the sorted groups."""
    total, s = 0, 0
    for e in cuts:
        total += (e - s) * L[e - 1]
        s = e
    return total


def brute_best(L, budget, maxb, g, batch_cost):
    """Min (computed tokens + batch_cost per batch), then min batches, over all contiguous cuts."""
    best = {0: (0, 0)}
    for i in range(1, len(L) + 1):
        cands = [(best[j][0] + (i - j) * g * L[i - 1] + batch_cost, best[j][1] + 1)
                 for j in range(max(0, i - width(L[i - 1], budget, maxb, g)), i)]
        best[i] = min(cands)
    return best[len(L)]


# -- random inputs -------------------------------------------------------------------------------

@st.composite
def corpora(draw):
    po = draw(st.integers(0, 2))
    n_texts = draw(st.integers(1, 8))
    pieces, limits = [], []
    for _ in range(n_texts):
        n = draw(st.integers(po + 2, 14))
        pieces.append(draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n)))
        limits.append(draw(st.integers(po + 2, 16)))
    tokens = np.array([t for p in pieces for t in p], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    limits = np.array(limits, dtype=np.int64)
    g = draw(st.sampled_from([1, 2, 3]))
    n_groups = draw(st.integers(0, 12))
    pairs = np.array(draw(st.lists(st.tuples(*[st.integers(0, n_texts - 1)] * 3),
                                   min_size=n_groups * g, max_size=n_groups * g)), dtype=np.int64).reshape(-1, 3)
    packer = _core.PairPacker(tokens, offsets, limits, cand1_id=CAND1, cand2_id=CAND2, pad_id=PAD, prefix_offset=po)
    return packer, tokens, offsets, limits, po, pairs, g


@settings(max_examples=150, deadline=None)
@given(corpora(), st.data())
def test_build_matches_twin(c, data):
    packer, tokens, offsets, limits, po, pairs, _ = c
    rows = np.array(data.draw(st.lists(st.integers(0, max(len(pairs) - 1, 0)), max_size=8 if len(pairs) else 0)),
                    dtype=np.int64)
    ids, mask, pos, pad = packer.build(pairs, rows)
    tids, tmask, tpos, tpad = twin_build(tokens, offsets, limits, po, pairs, rows)
    assert ids.dtype == mask.dtype == pos.dtype == np.int64
    assert ids.shape == mask.shape == (len(rows), len(tids[0]) if tids else 0)
    assert ids.tolist() == tids and mask.tolist() == tmask
    assert pos.reshape(-1, 3).tolist() == tpos and pad == tpad
    lens = packer.lengths(pairs)
    assert lens.tolist() == [len(twin_row(tokens, offsets, limits, po, r)[0]) for r in pairs]


@settings(max_examples=200, deadline=None)
@given(corpora(), st.integers(1, 120), st.integers(1, 12), st.sampled_from([0, 1, 7, 64, 10**9]))
def test_plan_matches_twin(c, budget, maxb, batch_cost):
    packer, tokens, offsets, limits, po, pairs, g = c
    maxb = max(maxb, g)
    order, bounds = packer.plan(pairs, budget, maxb, g, batch_cost)
    again = packer.plan(pairs, budget, maxb, g, batch_cost)
    assert np.array_equal(order, again[0]) and np.array_equal(bounds, again[1])  # deterministic
    P = len(pairs)
    assert sorted(order.tolist()) == list(range(P))  # every row exactly once
    assert bounds[0] == 0 and bounds[-1] == P and np.all(np.diff(bounds) > 0)
    lens = packer.lengths(pairs).tolist()
    glen = twin_group_lengths(lens, g)
    # Groups stay together, in order, sorted by their longest row (stable).
    sorted_groups = sorted(range(len(glen)), key=lambda i: glen[i])
    assert order.tolist() == [i * g + r for i in sorted_groups for r in range(g)]
    for b in range(len(bounds) - 1):
        batch = order[bounds[b]:bounds[b + 1]]
        assert len(batch) % g == 0 and batch[0] % g == 0
        longest = max(lens[r] for r in batch)
        assert len(batch) <= maxb
        assert len(batch) * longest <= budget or len(batch) == g  # only a lone group may exceed
    # The cheapest cut: computed tokens + batch_cost per batch (ties: fewer batches).
    L = sorted(glen)
    ends = [(int(e) // g) for e in bounds[1:]]
    assert (g * cost(L, ends) + batch_cost * len(ends), len(ends)) == brute_best(L, budget, maxb, g, batch_cost)
    asc, desc = greedy_cut(L, budget, maxb, g), greedy_cut_desc(L, budget, maxb, g)
    for greedy in (asc, desc):
        assert g * cost(L, ends) + batch_cost * len(ends) <= g * cost(L, greedy) + batch_cost * len(greedy)
    if batch_cost == 10**9:  # calls dominate: the fewest batches, as both greedy cuts give
        assert len(asc) == len(desc) == len(ends)
    if batch_cost == 0 and g == 1:  # padding is all that counts: no batch pads (equal lengths may share)
        assert packer.pad_tokens(pairs, order, bounds) == 0
    pad = packer.pad_tokens(pairs, order, bounds)
    assert pad == sum(twin_build(tokens, offsets, limits, po, pairs, order[bounds[b]:bounds[b + 1]])[3]
                      for b in range(len(bounds) - 1))


def test_plan_beats_both_greedy_cuts():
    # Rows of 12, 12, 18, 24 tokens, budget 75: ascending greedy cuts [12 12 18][24] (12 pad),
    # descending greedy [12][12 18 24] (18 pad); the best two-batch cut is [12 12][18 24] (6 pad).
    packer = _core.PairPacker(np.arange(1, 19, dtype=np.int64), np.array([0, 4, 10, 18], dtype=np.int64),
                              np.array([100] * 3, dtype=np.int64), cand1_id=CAND1, cand2_id=CAND2, pad_id=PAD)
    pairs = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1], [2, 2, 2]], dtype=np.int64)
    assert packer.lengths(pairs).tolist() == [12, 12, 18, 24]
    order, bounds = packer.plan(pairs, 75, 64, batch_cost=64)
    assert order.tolist() == [0, 1, 2, 3] and bounds.tolist() == [0, 2, 4]
    # Cheap calls: the 18 and the 24 go alone rather than pad the 18 by 6.
    assert packer.plan(pairs, 75, 64, batch_cost=4)[1].tolist() == [0, 2, 3, 4]
    assert packer.pad_tokens(pairs, order, bounds) == 6
    assert packer.pad_tokens(pairs, order, np.array([0, 3, 4])) == 12
    assert packer.pad_tokens(pairs, order, np.array([0, 1, 4])) == 18


def test_truncation_keeps_head_and_last_token():
    piece = np.array([101, 9, 11, 12, 13, 14, 102], dtype=np.int64)  # [CLS] prefix ... [SEP]
    packer = _core.PairPacker(np.tile(piece, 2), np.array([0, 7, 14], dtype=np.int64), np.array([4, 7], dtype=np.int64),
                              cand1_id=CAND1, cand2_id=CAND2, pad_id=PAD)
    ids, mask, pos, pad = packer.build(np.array([[0, 1, 0], [0, 0, 0]], dtype=np.int64), np.array([0, 1]))
    assert ids[0].tolist() == [101, 9, 11, 102, 101, CAND1, 11, 12, 13, 14, 102, 101, CAND2, 11, 102]
    assert ids[1].tolist() == [101, 9, 11, 102, 101, CAND1, 11, 102, 101, CAND2, 11, 102] + [PAD] * 3
    assert pos.tolist() == [[1, 5, 12], [1, 5, 9]] and pad == 3
    assert mask[1].tolist() == [1] * 12 + [0] * 3


def test_accepts_lists_and_non_contiguous():
    tokens = np.arange(1, 13, dtype=np.int64)
    packer = _core.PairPacker(tokens, [0, 4, 8, 12], [10, 10, 10], cand1_id=CAND1, cand2_id=CAND2, pad_id=PAD)
    pairs = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.int64)
    ref = packer.build(pairs, [0, 1])
    fortran = np.asfortranarray(pairs)
    strided = np.array([[0, 1, 2, 9], [2, 1, 0, 9]], dtype=np.int64)[:, :3]
    for p in (pairs.tolist(), fortran, strided):
        out = packer.build(p, np.array([0, 1]))
        assert all(np.array_equal(x, y) for x, y in zip(out[:3], ref[:3]))
    assert packer.lengths(pairs[::-1]).tolist() == [12, 12]
    assert packer.n_texts == 3 and packer.prefix_offset == 1


def test_threads_share_a_packer():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, 4000).astype(np.int64)
    offsets = np.arange(0, 4001, 40, dtype=np.int64)
    packer = _core.PairPacker(tokens, offsets, np.full(100, 30, dtype=np.int64), cand1_id=CAND1, cand2_id=CAND2,
                              pad_id=PAD)
    pairs = rng.integers(0, 100, (2000, 3)).astype(np.int64)
    ref = packer.build(pairs, np.arange(2000))[0]
    out = [None] * 4

    def work(i):
        out[i] = packer.build(pairs, np.arange(2000))[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(o, ref) for o in out)


# -- errors --------------------------------------------------------------------------------------

def _packer():
    return _core.PairPacker(np.arange(1, 13, dtype=np.int64), np.array([0, 4, 8, 12], dtype=np.int64),
                            np.array([10, 10, 10], dtype=np.int64), cand1_id=CAND1, cand2_id=CAND2, pad_id=PAD)


I64 = np.int64


@pytest.mark.parametrize("tokens, offsets, limits, kw, msg", [
    (np.arange(12, dtype=I64), np.array([0, 8, 4, 12], dtype=I64), np.full(3, 9, I64), {}, "non-decreasing"),
    (np.arange(12, dtype=I64), np.array([0, 4, 8, 13], dtype=I64), np.full(3, 9, I64), {}, "len\\(tokens\\)"),
    (np.arange(12, dtype=I64), np.array([0, 40, 8, 12], dtype=I64), np.full(3, 9, I64), {}, "beyond the token buffer"),
    (np.arange(12, dtype=I64), np.array([1, 4, 8, 12], dtype=I64), np.full(3, 9, I64), {}, "offsets\\[0\\]"),
    (np.arange(12, dtype=I64), np.array([], dtype=I64), np.full(0, 9, I64), {}, "n_texts\\+1"),
    (np.arange(12, dtype=I64), np.array([0, 4, 8, 12], dtype=I64), np.full(2, 9, I64), {}, "one entry per text"),
    (np.arange(12, dtype=I64), np.array([0, 4, 8, 12], dtype=I64), np.array([9, 2, 9], I64), {}, "limits\\[1\\] = 2"),
    (np.arange(12, dtype=I64), np.array([0, 2, 8, 12], dtype=I64), np.full(3, 9, I64), {}, "text 0 has 2 tokens"),
    (np.arange(12, dtype=I64), np.array([0, 4, 8, 12], dtype=I64), np.full(3, 9, I64), {"prefix_offset": -1},
     "prefix_offset"),
    (np.arange(12, dtype=np.int32), np.array([0, 4, 8, 12], dtype=I64), np.full(3, 9, I64), {}, "tokens must have dtype int64"),
    (np.arange(12, dtype=I64), np.array([0, 4, 8, 12.0]), np.full(3, 9, I64), {}, "offsets must have dtype int64"),
    (np.arange(12, dtype=I64).reshape(3, 4), np.array([0, 4, 8, 12], dtype=I64), np.full(3, 9, I64), {},
     "tokens must be 1-dimensional"),
])
def test_constructor_errors(tokens, offsets, limits, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _core.PairPacker(tokens, offsets, limits, cand1_id=CAND1, cand2_id=CAND2, pad_id=PAD, **kw)


@pytest.mark.parametrize("call, msg", [
    (lambda p: p.lengths(np.array([[0, 1, 3]], dtype=I64)), "pairs\\[0, 2\\] = 3 is out of range"),
    (lambda p: p.lengths(np.array([[0, -1, 2]], dtype=I64)), "pairs\\[0, 1\\] = -1"),
    (lambda p: p.lengths(np.array([[0, 1, 2]], dtype=np.int32)), "pairs must have dtype int64, got int32"),
    (lambda p: p.lengths(np.array([[0.0, 1, 2]])), "dtype int64, got float64"),
    (lambda p: p.lengths(np.array([0, 1, 2], dtype=I64)), "pairs must be 2-dimensional"),
    (lambda p: p.lengths(np.zeros((2, 4), dtype=I64)), "shape \\(n, 3\\), got \\(2, 4\\)"),
    (lambda p: p.plan(np.zeros((3, 3), dtype=I64), 100, 8, 2), "not a multiple of group_size"),
    (lambda p: p.plan(np.zeros((4, 3), dtype=I64), 100, 1, 2), "max_batch_size \\(1\\) must be >= group_size"),
    (lambda p: p.plan(np.zeros((4, 3), dtype=I64), 0, 8, 2), "token_budget must be >= 1"),
    (lambda p: p.plan(np.zeros((4, 3), dtype=I64), 100, 8, 0), "group_size must be >= 1"),
    (lambda p: p.plan(np.array([[0, 1, 5]], dtype=I64), 100, 8), "out of range for 3 texts"),
    (lambda p: p.build(np.zeros((2, 3), dtype=I64), np.array([0, 2], dtype=I64)), "rows\\[1\\] = 2 is out of range"),
    (lambda p: p.build(np.zeros((2, 3), dtype=I64), np.array([[0]], dtype=I64)), "rows must be 1-dimensional"),
    (lambda p: p.build(np.zeros((2, 3), dtype=I64), np.array([0.0])), "rows must have dtype int64"),
    (lambda p: p.pad_tokens(np.zeros((2, 3), dtype=I64), np.array([0, 1]), np.array([0, 3])), "bounds\\[-1\\]"),
    (lambda p: p.pad_tokens(np.zeros((2, 3), dtype=I64), np.array([0, 1]), np.array([0, 2, 1, 2])), "non-decreasing"),
    (lambda p: p.pad_tokens(np.zeros((2, 3), dtype=I64), np.array([0, 7]), np.array([0, 2])), "order\\[1\\] = 7"),
])
def test_call_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(_packer())


def test_huge_budget_is_one_batch():
    p = _packer()
    pairs = np.random.default_rng(0).integers(0, 3, (40000, 3)).astype(np.int64)
    order, bounds = p.plan(pairs, 10**12, 10**9, 2)
    assert bounds.tolist() == [0, 40000] and sorted(order.tolist()) == list(range(40000))


def test_empty_inputs():
    p = _packer()
    empty = np.empty((0, 3), dtype=I64)
    order, bounds = p.plan(empty, 100, 8, 2)
    assert order.tolist() == [] and bounds.tolist() == [0]
    ids, mask, pos, pad = p.build(empty, np.empty(0, dtype=I64))
    assert ids.shape == (0, 0) and pos.shape == (0, 3) and pad == 0
    assert p.lengths(empty).shape == (0,)
