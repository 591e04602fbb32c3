"""Selection quality: how often bubble / tournament pick what full ranking picks, and how much judge
score a pick gives up, as a function of how accurate the pairwise comparator is.

The comparator is synthetic unless a real checkpoint is given (--model). Synthetic model, per prompt:

* utility u_i = log(q / (1 - q)), q = judge_pref_i - 1 clipped to [1e-6, 1 - 1e-6] (judge_pref is 1 +
  P(candidate beats the GPT-4 reference); 17% of the scores sit below 1.000001: the clip keeps the
  ordering among weak candidates that the judge does express, and no further);
* ordered-pair logit f(i, j) = β·(u_i - u_j) + b + ε_ij (the logit that the candidate shown first is
  better), ε_ij ~ N(0, σ²) drawn once per ordered pair (seeded), b a position bias;
* pairwise agreement: the fraction of pairs with different utilities where sign(f(i, j) - f(j, i))
  matches the judge. b cancels there; it matters only for one-order comparisons (shown too);
* σ = 1 and β is calibrated by bisection on the drawn noise so that the agreement hits 60, 70, 80 and
  90 % (to within one pair).

Bubble and tournament start from a random arrangement per prompt (seeded); everything is averaged over
several noise seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blender_fast.selection.strategies import min_passes, select

from .common import BenchPrompt, log

CLIP = 1e-6
SIGMA = 1.0
DEFAULT_BIAS = 0.3
DEFAULT_LEVELS = (60, 70, 80, 90)
# (label, strategy, orders) of the selection runs compared.
VARIANTS = (("full", "full", "both"), ("bubble", "bubble", "both"), ("tournament", "tournament", "both"),
            ("bubble (one order)", "bubble", "one"), ("tournament (one order)", "tournament", "one"))


def utilities(prefs: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(prefs, dtype=np.float64) - 1.0, CLIP, 1.0 - CLIP)
    return np.log(q / (1.0 - q))


@dataclass
class SyntheticComparator:
    """f(p, i, j) = beta * (u[p, i] - u[p, j]) + bias + sigma * noise[p, i, j]."""

    u: np.ndarray  # [P, n]
    noise: np.ndarray  # [P, n, n], standard normal, one draw per ordered pair
    beta: float
    bias: float = DEFAULT_BIAS
    sigma: float = SIGMA

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        p, i, j = rows[:, 0], rows[:, 1], rows[:, 2]
        return self.beta * (self.u[p, i] - self.u[p, j]) + self.bias + self.sigma * self.noise[p, i, j]

    def matrix(self) -> np.ndarray:
        return self.beta * (self.u[:, :, None] - self.u[:, None, :]) + self.bias + self.sigma * self.noise


@dataclass
class MatrixComparator:
    """Logits looked up in a precomputed [P, n, n] matrix of f(i, j) (a real checkpoint's)."""

    logits: np.ndarray

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.logits[rows[:, 0], rows[:, 1], rows[:, 2]]

    def matrix(self) -> np.ndarray:
        return self.logits


def pair_differences(u: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u_i - u_j and m(i, j) - m(j, i) over the pairs i < j whose utilities differ."""
    a, b = np.triu_indices(u.shape[1], 1)
    du, dm = u[:, a] - u[:, b], m[:, a, b] - m[:, b, a]
    return du[du != 0], dm[du != 0]


def pairwise_agreement(logits: np.ndarray, u: np.ndarray) -> float:
    """Fraction of pairs i<j with u_i != u_j where sign(f(i,j) - f(j,i)) == sign(u_i - u_j)."""
    du, d = pair_differences(u, logits)
    return float(np.mean(np.sign(d) == np.sign(du)))


def calibrate_beta(u: np.ndarray, noise: np.ndarray, target: float, sigma: float = SIGMA) -> float:
    """β giving pairwise agreement `target` (0..1) with this noise draw. Agreement is monotone in β:
    pair (i, j) agrees iff 2β|u_i - u_j| > -sign(u_i - u_j)·σ·(ε_ij - ε_ji)."""
    du, de = pair_differences(u, sigma * noise)

    def agreement(beta):
        return np.mean(np.sign(2 * beta * du + de) == np.sign(du))

    lo, hi = 0.0, 1.0
    while agreement(hi) < target and hi < 1e6:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if agreement(mid) < target else (lo, mid)
    return hi


def evaluate(comparator, prefs: np.ndarray, seed: int, top_ks=(1, 3)) -> list[dict]:
    """Run every variant with this comparator; per (variant, k) metrics against full and the judge."""
    n_prompts, n = prefs.shape
    starts = start_orders(n_prompts, n, seed + 7919)  # independent of the noise draw
    best_pref = prefs.max(axis=1)
    out = []
    for k in top_ks:
        full = None
        for label, strategy, orders in VARIANTS:  # full first: the others are compared with it
            sels = select([n] * n_prompts, k, strategy, comparator, orders=orders, seed=seed,
                          initial_orders=None if strategy == "full" else starts)
            chosen = [s.top_k for s in sels]
            full = full or chosen
            got_best = np.array([prefs[p, c].max() for p, c in enumerate(chosen)])
            row = {"variant": label, "top_k": k, "seed": seed,
                   "forward_passes": float(np.mean([s.forward_passes for s in sels])),
                   "steps": float(np.mean([s.steps for s in sels])),
                   # regret of the best candidate in the chosen set (for k=1: the pick)
                   "regret": float(np.mean(best_pref - got_best)),
                   "judge_best_in_set_pct": 100.0 * float(np.mean(got_best >= best_pref)),
                   "top1_agreement_with_full_pct": 100.0 * float(np.mean([c[0] == f[0] for c, f in zip(chosen, full)]))}
            if k > 1:
                row["overlap_with_full_pct"] = 100.0 * float(np.mean([len(set(c) & set(f)) / k
                                                                      for c, f in zip(chosen, full)]))
            out.append(row)
    return out


def mean_over_seeds(rows: list[dict], group: tuple) -> list[dict]:
    """The rows of each group (one per noise seed) as one: means, the max of *_max keys, regret's std."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group), []).append(r)
    out = []
    for key, rs in groups.items():
        m = {**dict(zip(group, key)), "seeds": len(rs)}
        for k in (k for k in rs[0] if k not in group and k != "seed"):
            m[k] = max(r[k] for r in rs) if k.endswith("_max") else float(np.mean([r[k] for r in rs]))
        m["regret_std_over_seeds"] = float(np.std([r["regret"] for r in rs]))
        out.append(m)
    return out


NO_JUDGE = {"skipped": "no prompt in the data has judge_pref for all its candidates"}


def usable(prompts: list[BenchPrompt]) -> tuple[list[BenchPrompt], np.ndarray]:
    """Prompts with a judge score for every candidate, all with the most common candidate count, and
    their scores [P, n]."""
    scored = [p for p in prompts if p.judge_pref is not None]
    if not scored:
        return [], np.zeros((0, 0))
    n = max(set(len(p.candidates) for p in scored), key=[len(p.candidates) for p in scored].count)
    scored = [p for p in scored if len(p.candidates) == n]
    return scored, np.array([p.judge_pref for p in scored], dtype=np.float64)


def random_pick_regret(prefs: np.ndarray) -> float:
    return float(np.mean(prefs.max(axis=1) - prefs.mean(axis=1)))


def start_orders(n_prompts: int, n: int, seed: int) -> list[np.ndarray]:
    """Bubble's and tournament's start arrangement per prompt: the data lists the 12 models in a fixed
    order, so one shared arrangement would give the same model the same bracket slot in every prompt."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n).astype(np.int64) for _ in range(n_prompts)]


def calibrated_levels(prefs: np.ndarray, levels, seeds: int, bias: float, rows_for):
    """For each agreement level: the synthetic comparator calibrated to it for every noise seed, each run
    through ``rows_for(comparator, prefs, seed) -> rows``; yields (level, rows, betas, achieved %)."""
    u = utilities(prefs)
    n_prompts, n = prefs.shape
    for level in levels:
        rows, betas, achieved = [], [], []
        for seed in range(seeds):
            noise = np.random.default_rng(seed).standard_normal((n_prompts, n, n))
            beta = calibrate_beta(u, noise, level / 100.0)
            comp = SyntheticComparator(u, noise, beta, bias)
            achieved.append(100.0 * pairwise_agreement(comp.matrix(), u))
            betas.append(beta)
            rows += rows_for(comp, prefs, seed)
        yield level, rows, betas, achieved


def on_synthetic(section: str, prompts, levels, seeds: int, bias: float, rows_for, group: tuple) -> dict:
    """``rows_for(comparator, prefs, seed)`` with the synthetic comparator at every agreement level."""
    prompts, prefs = usable(prompts)
    if not prompts:
        return NO_JUDGE
    u = utilities(prefs)
    n_prompts, n = prefs.shape
    levels_out = []
    for level, rows, betas, achieved in calibrated_levels(prefs, levels, seeds, bias, rows_for):
        levels_out.append({"target_agreement_pct": level, "achieved_agreement_pct": float(np.mean(achieved)),
                           "beta_mean": float(np.mean(betas)), "rows": mean_over_seeds(rows, group)})
        log(f"{section}: agreement {level}% (beta {np.mean(betas):.3f}) done")
    a, b = np.triu_indices(n, 1)
    return {"comparator": "synthetic", "prompts": n_prompts, "candidates": n, "seeds": seeds, "sigma": SIGMA,
            "bias": bias, "clip": CLIP, "distinct_pairs_pct": 100.0 * float(np.mean(u[:, a] != u[:, b])),
            "random_pick_regret": random_pick_regret(prefs), "levels": levels_out}


def model_logit_matrix(ranker, prompts: list[BenchPrompt]) -> np.ndarray:
    """f(i, j) for every ordered pair of every prompt, from a real checkpoint (one packed call)."""
    n = len(prompts[0].candidates)
    a, b = np.where(~np.eye(n, dtype=bool))
    inputs, left, right = [], [], []
    for p in prompts:
        inputs += [p.instruction] * len(a)
        left += [p.candidates[i] for i in a]
        right += [p.candidates[j] for j in b]
    logits = ranker.compare(inputs, left, right, mode="[A,B]")
    m = np.zeros((len(prompts), n, n))
    m[:, a, b] = np.asarray(logits, dtype=np.float64).reshape(len(prompts), len(a))
    return m


def on_checkpoint(section: str, ranker, prompts, seeds: int, rows_for, group: tuple) -> dict:
    """The same metrics with a real checkpoint's logits. The model is run once per ordered pair and
    every strategy reads those logits: the same decisions as running it per strategy (deterministic)."""
    prompts, prefs = usable(prompts)
    if not prompts:
        return NO_JUDGE
    log(f"{section}: running the checkpoint on all ordered pairs of {len(prompts)} prompts")
    comp = MatrixComparator(model_logit_matrix(ranker, prompts))
    rows = [r for seed in range(seeds) for r in rows_for(comp, prefs, seed)]
    return {"comparator": "checkpoint", "prompts": len(prompts), "candidates": prefs.shape[1], "seeds": seeds,
            "achieved_agreement_pct": 100.0 * pairwise_agreement(comp.logits, utilities(prefs)),
            "random_pick_regret": random_pick_regret(prefs), "rows": mean_over_seeds(rows, group)}


def run_synthetic(prompts: list[BenchPrompt], levels=DEFAULT_LEVELS, seeds: int = 5, bias: float = DEFAULT_BIAS) -> dict:
    return on_synthetic("quality", prompts, levels, seeds, bias, evaluate, ("variant", "top_k"))


def run_model(ranker, prompts: list[BenchPrompt], seeds: int = 5) -> dict:
    return on_checkpoint("quality", ranker, prompts, seeds, evaluate, ("variant", "top_k"))


# -- the frontier: quality against forward passes for the budgeted strategies -----------------------

FRONTIER_STRATEGIES = ("swiss", "knockout_rr", "adaptive")
# Forward passes per prompt (orders="both": 2 per comparison) at n = 12: from a knockout's 22 to full's 132.
FRONTIER_BUDGETS = (22, 26, 30, 34, 38, 44, 52, 66, 88, 110, 132)
FRONTIER_REFERENCES = ("full", "tournament", "bubble")
# The selection targets (best of 12): regret within `slack` of full's at <= `passes`, in <= `steps` steps.
FRONTIER_TARGETS = ({"agreement_pct": 60, "passes": 44, "slack": 0.02, "steps": 8},
                    {"agreement_pct": 70, "passes": 44, "slack": 0.01, "steps": None})


def _frontier_rows(comparator, prefs: np.ndarray, seed: int, budgets) -> list[dict]:
    """Top-1 judge regret and agreement with full for every budgeted strategy at every budget, and the
    fixed-cost references, all from the same starting arrangements."""
    n_prompts, n = prefs.shape
    starts = start_orders(n_prompts, n, seed + 7919)  # independent of the noise draw
    runs = [(s, None) for s in FRONTIER_REFERENCES] + [
        (s, b) for s in FRONTIER_STRATEGIES for b in budgets if b >= min_passes(s, n, 1)]
    out, full = [], None
    for strategy, budget in runs:  # full first: the others are compared with it
        sels = select([n] * n_prompts, 1, strategy, comparator, initial_orders=None if strategy == "full" else starts,
                      **({"budget": budget} if budget else {}))
        picks = np.array([s.top_k[0] for s in sels])
        full = picks if full is None else full
        passes, steps = [s.forward_passes for s in sels], [s.steps for s in sels]
        out.append({"strategy": strategy, "budget": budget, "seed": seed, "forward_passes": float(np.mean(passes)),
                    "forward_passes_max": int(max(passes)), "steps": float(np.mean(steps)), "steps_max": int(max(steps)),
                    "regret": float(np.mean(prefs.max(axis=1) - prefs[np.arange(n_prompts), picks])),
                    "top1_agreement_with_full_pct": 100.0 * float(np.mean(picks == full))})
    return out


def frontier_targets(levels: list[dict]) -> list[dict]:
    """Whether each target is met, by the best budgeted strategy within the target's passes."""
    out = []
    for t in FRONTIER_TARGETS:
        lvl = next((x for x in levels if x["target_agreement_pct"] == t["agreement_pct"]), None)
        if lvl is None:
            continue
        full = next(r for r in lvl["rows"] if r["strategy"] == "full")
        ok = [r for r in lvl["rows"] if r["budget"] is not None and r["forward_passes_max"] <= t["passes"]
              and (t["steps"] is None or r["steps_max"] <= t["steps"])]
        best = min(ok, key=lambda r: r["regret"]) if ok else None
        out.append({**t, "full_regret": full["regret"], "best_strategy": best and best["strategy"],
                    "best_budget": best and best["budget"], "best_regret": best and best["regret"],
                    "best_steps_max": best and best["steps_max"],
                    "met": bool(best and best["regret"] - full["regret"] <= t["slack"])})
    return out


def run_frontier(prompts: list[BenchPrompt], levels=DEFAULT_LEVELS, seeds: int = 5, budgets=FRONTIER_BUDGETS,
                 bias: float = DEFAULT_BIAS) -> dict:
    """The synthetic comparator of run_synthetic (same calibration, same noise seeds)."""
    out = on_synthetic("frontier", prompts, levels, seeds, bias,
                       lambda comp, prefs, seed: _frontier_rows(comp, prefs, seed, budgets), ("strategy", "budget"))
    if "levels" in out:
        out.update(budgets=list(budgets), targets=frontier_targets(out["levels"]))
    return out


def run_model_frontier(ranker, prompts: list[BenchPrompt], seeds: int = 5, budgets=FRONTIER_BUDGETS) -> dict:
    """The frontier on a real checkpoint's logits (every ordered pair scored once, then looked up)."""
    return {**on_checkpoint("frontier", ranker, prompts, seeds,
                            lambda comp, prefs, seed: _frontier_rows(comp, prefs, seed, budgets),
                            ("strategy", "budget")), "budgets": list(budgets)}
