"""The cascade's bound (runtime/calibration.py) and the cascade end to end on the tiny generated checkpoint
with a real fast variant (torch bf16): answers equal the plain fp32 ranker's."""
import numpy as np
import pytest

from tests.conftest import require

PROMPTS = ["What is 2+2?", "Name a fruit.", "How do I boil an egg?"]
CANDS = [["4", "Four.", "22", "It is four, since two plus two makes four."],
         ["Apple.", "A car.", "Banana is a fruit.", "Fruit."],
         ["Boil water, add the egg, wait 8 minutes.", "Microwave it.", "Eggs are laid by hens.", "Put it in water."]]


@pytest.fixture(scope="module")
def pair(tiny_checkpoint):
    require("torch")
    from blender_fast import Ranker

    fp32 = Ranker.from_pretrained(tiny_checkpoint, backend="onnx", precision="fp32", threads=1)
    fast = Ranker.from_pretrained(tiny_checkpoint, backend="torch", precision="bf16", threads=1)
    return fp32, fast


@pytest.mark.slow
def test_measured_bound_holds_and_is_cached(tiny_checkpoint, pair, tmp_path, one_torch_thread):
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.runtime.calibration import FLOOR, MIN_GAIN, SAFETY, bound_path, cached_bound

    fp32, fast = pair
    ckpt = load_checkpoint(tiny_checkpoint)
    feats = {"cpu_model": "Test", "isa": ["avx512_bf16"], "logical_cores": 2}
    rec = cached_bound(ckpt, "torch bf16", fast.model, fp32.model, fp32.tokenizer, "cpu", 1, feats, tmp_path)
    assert not rec["cached"] and rec["rows"] > 20
    assert rec["eps"] == pytest.approx(SAFETY * rec["max_err"] + FLOOR)
    assert rec["median_err"] <= rec["p99_err"] <= rec["max_err"]
    assert 0.0 <= rec["rescore_fraction_estimate"] <= 1.0
    if rec["rescore_fraction_estimate"] * MIN_GAIN >= 1.0:  # hopeless: the speed is not timed
        assert rec["speed_vs_fp32"] is None and rec["expected_time_vs_fp32"] == rec["rescore_fraction_estimate"]
    else:
        assert rec["speed_vs_fp32"] > 0
    again = cached_bound(ckpt, "torch bf16", None, None, None, "cpu", 1, feats, tmp_path)  # read, not measured
    assert again["cached"] and again["eps"] == rec["eps"]
    # Another CPU (or ISA) is another record.
    other = bound_path(ckpt, "torch bf16", "cpu", 1, {**feats, "isa": ["amx_bf16"]}, tmp_path)
    assert other != bound_path(ckpt, "torch bf16", "cpu", 1, feats, tmp_path)


def test_a_hopeless_variant_is_not_timed(tiny_checkpoint, pair):
    """A fast pass whose error puts every comparison inside the bound cannot pay at any speed: one pass of
    each model gives the errors, and the three timing rounds are skipped. A faithful one is timed."""
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.runtime.calibration import FLOOR, calibration_batches, measure_bound

    fp32, _ = pair
    ckpt = load_checkpoint(tiny_checkpoint)
    n_batches = len(calibration_batches(fp32.tokenizer, ckpt)[0])
    calls = {"fast": 0, "exact": 0}

    def counted(name, model, shift):
        def run(ids, mask, pos):
            calls[name] += 1
            out = np.asarray(model(ids, mask, pos), dtype=np.float32)
            return out + shift * np.where(np.arange(len(out)) % 2 == 0, 1.0, -1.0).astype(np.float32)
        return run

    rec = measure_bound(counted("fast", fp32.model, 50.0), counted("exact", fp32.model, 0.0), fp32.tokenizer, ckpt)
    assert rec["rescore_fraction_estimate"] == 1.0 and rec["speed_vs_fp32"] is None
    assert calls == {"fast": n_batches, "exact": n_batches}
    calls.update(fast=0, exact=0)
    rec = measure_bound(counted("fast", fp32.model, 0.0), counted("exact", fp32.model, 0.0), fp32.tokenizer, ckpt)
    assert rec["max_err"] == 0.0 and rec["eps"] == FLOOR and rec["rescore_fraction_estimate"] < 0.5
    assert rec["speed_vs_fp32"] > 0 and calls == {"fast": 4 * n_batches, "exact": 4 * n_batches}


def all_pair_error(fast, fp32) -> float:
    """max |fast - fp32| over every ordered candidate pair of PROMPTS: the bound that holds on these rows."""
    src, a, b = [], [], []
    for p, cs in zip(PROMPTS, CANDS):
        for i in range(len(cs)):
            for j in range(len(cs)):
                if i != j:
                    src.append(p), a.append(cs[i]), b.append(cs[j])
    return float(np.abs(fast.compare(src, a, b, mode="[A,B]") - fp32.compare(src, a, b, mode="[A,B]")).max())


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_cascade_ranker_equals_fp32(pair, scale, one_torch_thread):
    """With a bound that holds on every row (the observed max error, or ten times it), the cascade returns
    fp32's ranks, picks and every comparison decision; each result says how many rows it re-scored."""
    from blender_fast import Ranker

    fp32, fast = pair
    eps = scale * all_pair_error(fast, fp32) + 1e-6
    casc = Ranker(fast.model, fast.tokenizer, fast.source_maxlength, fast.candidate_maxlength)
    casc.enable_cascade(fp32.model, eps)
    np.testing.assert_array_equal(casc.rank(PROMPTS, CANDS), fp32.rank(PROMPTS, CANDS))
    full = casc.select(PROMPTS, CANDS, top_k=2, strategy="full")
    assert [g.top_k for g in full] == [r.top_k for r in fp32.select(PROMPTS, CANDS, top_k=2, strategy="full")]
    for strategy in ("bubble", "tournament", "adaptive"):
        got = casc.select(PROMPTS, CANDS, top_k=2, strategy=strategy)
        ref = fp32.select(PROMPTS, CANDS, top_k=2, strategy=strategy)
        assert [g.top_k for g in got] == [r.top_k for r in ref]
        assert [g.log for g in got] == [r.log for r in ref]
        assert all(0 <= g.rescored <= g.forward_passes for g in got)
        if strategy == "adaptive":  # budgeted: always scored by the exact model
            assert all(g.rescored == g.forward_passes for g in got)
    # worst-of-n: the cascade sees negated logits from both models alike.
    got = casc.select(PROMPTS, CANDS, top_k=1, strategy="bubble", worst=True)
    assert [g.top_k for g in got] == [r.top_k for r in fp32.select(PROMPTS, CANDS, top_k=1, strategy="bubble", worst=True)]
    # compare() returns logit values: with the cascade on they come from the exact model.
    np.testing.assert_array_equal(casc.compare(PROMPTS, [c[0] for c in CANDS], [c[1] for c in CANDS]),
                                  fp32.compare(PROMPTS, [c[0] for c in CANDS], [c[1] for c in CANDS]))


def test_cascade_with_exact_fast_model_rescores_only_ties(pair):
    """fp32 as its own fast model with eps=0: nothing is uncertain but exact ties, answers identical."""
    from blender_fast import Ranker

    fp32, _ = pair
    casc = Ranker(fp32.model, fp32.tokenizer, fp32.source_maxlength, fp32.candidate_maxlength)
    casc.enable_cascade(fp32.model, 0.0)
    got = casc.select(PROMPTS, CANDS, top_k=1, strategy="full")
    assert [g.rescored for g in got] == [0, 0, 0]
    np.testing.assert_array_equal(casc.rank(PROMPTS, CANDS, return_scores=True),
                                  fp32.rank(PROMPTS, CANDS, return_scores=True))


def test_ranker_without_exact_model_says_so(pair):
    from blender_fast.selection.steps import Step
    from blender_fast.selection.strategies import select_steps

    fp32, _ = pair
    with pytest.raises(ValueError, match="no model named 'exact'"):
        fp32.model_for("exact")
    assert isinstance(select_steps([2], 1, "full"), type(x for x in ())) and Step(np.zeros((0, 3), np.int64)).model == "default"


def test_no_bf16_units_means_no_calibration(tiny_checkpoint, tmp_path, monkeypatch):
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.runtime import autoselect

    def boom(*a, **k):
        raise AssertionError("nothing may be built or measured on a CPU without bf16 units")
    monkeypatch.setattr(autoselect, "build_model", boom)
    feats = {"cpu_model": "Old", "isa": ["avx2"], "logical_cores": 2}
    variants = autoselect.candidate_variants("cpu", feats)
    cascade, why = autoselect.choose_cascade(load_checkpoint(tiny_checkpoint), variants, variants[-1], "cpu", 1,
                                             feats, tmp_path)
    assert cascade is None and "no bf16 units" in why
    assert not list(tmp_path.glob("bound-*.json"))
    # bf16 without AMX: measured to lose (docs/exact-at-speed.md), so nothing is built or measured either.
    feats = {"cpu_model": "Zen", "isa": ["avx512_bf16", "avx512f", "avx2"], "logical_cores": 2}
    variants = autoselect.candidate_variants("cpu", feats)
    cascade, why = autoselect.choose_cascade(load_checkpoint(tiny_checkpoint), variants, variants[-1], "cpu", 1,
                                             feats, tmp_path)
    assert cascade is None and "without AMX" in why
    assert not list(tmp_path.glob("bound-*.json"))


@pytest.mark.slow
def test_auto_takes_the_cascade_when_it_pays(tiny_checkpoint, tmp_path, monkeypatch, one_torch_thread):
    """The wiring: a variant whose (pretended) bound and speed pay is taken as the fast model, fp32 as the
    exact one; describe() and the reason say so; a variant that does not pay is never taken."""
    from blender_fast import Ranker
    from blender_fast.runtime import autoselect, calibration

    monkeypatch.setattr(autoselect, "cpu_features",
                        lambda cpuinfo=None: {"cpu_model": "Test", "isa": ["amx_bf16", "avx512_bf16", "avx2"],
                                              "logical_cores": 2})
    seen = []

    def fake_bound(ckpt, variant, fast, exact, tok, device, threads, features, cache_dir=None):
        seen.append(variant)
        good = variant == "torch bf16"
        return {"eps": 0.01 if good else 2.0, "speed_vs_fp32": 3.0 if good else 1.2,
                "rescore_fraction_estimate": 0.05 if good else 1.0,
                "expected_time_vs_fp32": 1 / 3.0 + 0.05 if good else 1 / 1.2 + 1.0, "cached": False}
    monkeypatch.setattr(calibration, "cached_bound", fake_bound)
    r = Ranker.from_pretrained(tiny_checkpoint, precision="auto", backend="auto", threads=1, cache_dir=tmp_path)
    d = r.describe()
    assert "torch bf16" in seen and "onnx int8" not in seen
    assert d["cascade"] == {"fast": "torch bf16", "eps": 0.01}
    assert d["reason"].startswith("certified cascade") and (d["backend"], d["precision"]) == ("onnx", "fp32")
    assert set(r.extra_models) == {"exact"} and r.cascade_eps == 0.01
    sels = r.select(PROMPTS, CANDS, top_k=1, strategy="bubble")
    assert all(0 <= s.rescored <= s.forward_passes for s in sels)


def test_shallow_copy_keeps_its_own_models(pair):
    """copy.copy(ranker) then setting the copy's model (or cascade) leaves the original alone."""
    import copy

    fp32, fast = pair
    c = copy.copy(fp32)
    c.model = fast.model
    c.enable_cascade(fp32.model, 0.1)
    assert fp32.model is not fast.model and "exact" not in fp32.extra_models and fp32.cascade_eps is None


def test_the_engine_serves_the_cascade(pair):
    """The server's BatchingEngine takes its generators through Ranker.cascaded too: with a bound so loose
    that nothing is certified, every comparison is re-run on the exact model, and the answers are fp32's."""
    from blender_fast import BatchingEngine, Ranker

    fp32, fast = pair
    casc = Ranker(fast.model, fast.tokenizer, fast.source_maxlength, fast.candidate_maxlength)
    casc.enable_cascade(fp32.model, 1e3)
    with BatchingEngine(casc) as engine:
        got = engine.select_sync(PROMPTS, CANDS, top_k=2, strategy="bubble")
        ranks = engine.rank_sync(PROMPTS, CANDS)
    ref = fp32.select(PROMPTS, CANDS, top_k=2, strategy="bubble")
    assert [g.top_k for g in got] == [r.top_k for r in ref]
    assert all(g.rescored == g.forward_passes > 0 for g in got)
    np.testing.assert_array_equal(ranks, fp32.rank(PROMPTS, CANDS))
