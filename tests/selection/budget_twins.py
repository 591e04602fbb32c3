"""Plain-Python twins of the budgeted selection strategies (swiss, knockout_rr, adaptive): one prompt at
a time, written for reading, used as the test oracle of csrc/selection.hpp. The arithmetic (ratings,
priorities) is done in the same order as the C++, so the twins agree with it bit for bit.

A twin returns (top_k, log, steps): log lists (a, b, winner) in resolution order, steps counts the
rounds of comparisons (each round is chosen from the results of the previous ones only).
"""
from __future__ import annotations

import math

SWEEPS = 50  # Gauss-Seidel sweeps of the rating solve
RIDGE = 1.0  # one pseudo-game against an average (rating 0) candidate


def decide(s, a, b):
    return a if s > 0 else b if s < 0 else min(a, b)


def min_budget(strategy, n, k):
    """Fewest comparisons a budgeted strategy accepts for top_k = k of n candidates."""
    if n <= 1:
        return 0
    if strategy == "knockout_rr":
        return n - k + k * (k - 1) // 2
    return n - 1


def survivors_for(n, k, budget):
    """knockout_rr: the largest m >= k with a knockout to m (n - m matches) plus a round robin among m
    (m(m-1)/2) within the budget."""
    m = k
    while m < n and n - (m + 1) + (m + 1) * m // 2 <= budget:
        m += 1
    return m


class _State:
    def __init__(self, order):
        self.n = len(order)
        self.order = list(order)
        self.pos = {c: i for i, c in enumerate(order)}
        self.margin = {}  # (i, j) -> margin in favour of i, both orientations
        self.nbrs = [[] for _ in range(self.n)]
        self.losses = [0] * self.n
        self.wins = [0] * self.n
        self.log = []
        self.steps = 0

    def played(self, a, b):
        return (a, b) in self.margin

    def record(self, a, b, x):
        w = decide(x, a, b)
        self.log.append((a, b, w))
        self.margin[(a, b)] = x
        self.margin[(b, a)] = -x
        self.nbrs[a].append(b)
        self.nbrs[b].append(a)
        self.wins[w] += 1
        self.losses[b if w == a else a] += 1

    def ratings(self):
        """Least-squares (Massey) ratings with a ridge: (deg_i + RIDGE) r_i - sum_j r_j = sum_j d_ij,
        by Gauss-Seidel sweeps; neighbours in increasing index order."""
        r = [0.0] * self.n
        nb = [sorted(x) for x in self.nbrs]
        for _ in range(SWEEPS):
            for i in range(self.n):
                s = 0.0
                for j in nb[i]:
                    s += self.margin[(i, j)] + r[j]
                r[i] = s / (len(nb[i]) + RIDGE)
        return r

    def run(self, pairs, score):
        """One step: every pair is decided from the state before the step."""
        if pairs:
            self.steps += 1
        for a, b in pairs:
            self.record(a, b, score(a, b))


def swiss(order, k, budget, score):
    """Swiss-system rounds: rank by (losses, -rating, arrangement position), pair each unpaired
    candidate with the next unpaired one in that ranking it has not met; a round is cut to the budget
    (top pairs first). Pick: the only unbeaten candidate if there is exactly one, then by rating, then
    lower index."""
    s = _State(order)
    left = budget
    while s.n > 1 and left > 0:
        r = s.ratings()
        ranking = sorted(range(s.n), key=lambda c: (s.losses[c], -r[c], s.pos[c]))
        paired = [False] * s.n
        pairs = []
        for x, i in enumerate(ranking):
            if paired[i]:
                continue
            for j in ranking[x + 1:]:
                if not paired[j] and not s.played(i, j):
                    paired[i] = paired[j] = True
                    pairs.append((i, j))
                    break
        pairs = pairs[:left]
        if not pairs:
            break
        s.run(pairs, score)
        left -= len(pairs)
    r = s.ratings()
    unbeaten = [c for c in range(s.n) if s.losses[c] == 0]
    first = unbeaten[0] if len(unbeaten) == 1 else -1
    top = sorted(range(s.n), key=lambda c: (c != first, -r[c], c))[:k]
    return top, s.log, s.steps


def knockout_rr(order, k, budget, score):
    """Knockout rounds over the arrangement (consecutive survivors meet, only as many matches as it
    takes to reach m survivors), then a round robin among the m. Pick: the round robin's Condorcet
    winner (it beat the other m-1) if there is one, then the larger round-robin margin sum, then lower
    index."""
    s = _State(order)
    m = survivors_for(s.n, k, budget)
    alive = list(order)
    while len(alive) > m:
        pairs = [(alive[2 * i], alive[2 * i + 1]) for i in range(min(len(alive) // 2, len(alive) - m))]
        s.run(pairs, score)
        losers = {a if w == b else b for a, b, w in s.log[-len(pairs):]}
        alive = [c for c in alive if c not in losers]
    rr = [(alive[i], alive[j]) for i in range(len(alive)) for j in range(i + 1, len(alive))]
    s.run(rr, score)
    wins = {c: 0 for c in alive}
    msum = {c: 0.0 for c in alive}
    for a, b in rr:
        wins[decide(s.margin[(a, b)], a, b)] += 1
    for c in alive:  # margin sums in increasing opponent index, as the C++ does
        for o in sorted(alive):
            if o != c:
                msum[c] += s.margin[(c, o)]
    top = sorted(alive, key=lambda c: (wins[c] != len(alive) - 1, -msum[c], c))[:k]
    return top, s.log, s.steps


def per_step(n):
    return max(2, (n + 3) // 4)


def adaptive(order, k, budget, score):
    """Step 1: a matching over the arrangement. Step 2: a knockout round among the unbeaten (by rating,
    best against second best, ...), unless at most k are unbeaten. Then each step plays the per_step(n)
    unplayed pairs
    touching the current top k + 1 by rating (for the best of n: the leader and the runner-up) whose
    rating gap is smallest relative to its uncertainty,
    |r_i - r_j| / sqrt(1/(g_i+1) + 1/(g_j+1)); when those are exhausted, any unplayed pair. Pick: top k
    by rating, then lower index."""
    s = _State(order)
    left = budget
    if s.n > 1:
        first = [(order[2 * i], order[2 * i + 1]) for i in range(s.n // 2)][:left]
        s.run(first, score)
        left -= len(first)
    if left > 0:
        r = s.ratings()
        unbeaten = sorted((c for c in range(s.n) if s.losses[c] == 0), key=lambda c: (-r[c], c))
        if len(unbeaten) > k:
            pairs = [(unbeaten[2 * i], unbeaten[2 * i + 1]) for i in range(len(unbeaten) // 2)][:left]
            s.run(pairs, score)
            left -= len(pairs)
    while left > 0:
        r = s.ratings()
        ranking = sorted(range(s.n), key=lambda c: (-r[c], c))
        top = set(ranking[:k + 1])
        g = [len(x) for x in s.nbrs]

        def prio(i, j):
            return abs(r[i] - r[j]) / math.sqrt(1.0 / (g[i] + 1) + 1.0 / (g[j] + 1))

        cand = [(prio(i, j), i, j) for i in range(s.n) for j in range(i + 1, s.n)
                if not s.played(i, j) and (i in top or j in top)]
        if not cand:
            cand = [(prio(i, j), i, j) for i in range(s.n) for j in range(i + 1, s.n) if not s.played(i, j)]
        if not cand:
            break
        cand.sort()
        pairs = [(i, j) for _, i, j in cand[:min(per_step(s.n), left)]]
        s.run(pairs, score)
        left -= len(pairs)
    r = s.ratings()
    top = sorted(range(s.n), key=lambda c: (-r[c], c))[:k]
    return top, s.log, s.steps


TWINS = {"swiss": swiss, "knockout_rr": knockout_rr, "adaptive": adaptive}
