"""Issue 25.1 / 25.6 on the Python side: truncation lengths have a maximum and a minimum in the user's
words, texts are cut by characters before tokenizing without changing the tokens kept, booleans are
booleans, a Ranker pickles by its source, and a damaged generated-checkpoint manifest is named."""
from __future__ import annotations

import copy
import multiprocessing
import pickle

import numpy as np
import pytest

from blender_fast import Ranker

Q = "What is the capital of France? " * 3
CANDS = ["Paris is the capital.", "It is Lyon, I think.", "Marseille."]


@pytest.fixture(scope="module")
def ranker(tiny_checkpoint):
    return Ranker.from_pretrained(tiny_checkpoint, threads=1)


def test_lengths_above_the_checkpoints_are_refused_naming_the_argument(ranker):
    assert (ranker.max_source_length, ranker.max_candidate_length) == (ranker.source_maxlength,
                                                                       ranker.candidate_maxlength)
    with pytest.raises(ValueError, match=rf"source_maxlength = 1000000 is above the maximum, "
                                         rf"{ranker.source_maxlength} .*max_source_length=N"):
        ranker.rank([Q], [CANDS], source_maxlength=10**6, candidate_maxlength=10**6)
    with pytest.raises(ValueError, match=rf"candidate_maxlength = {ranker.candidate_maxlength + 1} is above"):
        ranker.select([Q], [CANDS], candidate_maxlength=ranker.candidate_maxlength + 1)
    # At the maximum: served, and the same as the default.
    np.testing.assert_array_equal(ranker.rank([Q], [CANDS], source_maxlength=ranker.source_maxlength),
                                  ranker.rank([Q], [CANDS]))


def test_the_maximum_is_checked_at_load_and_can_be_raised(tiny_checkpoint):
    with pytest.raises(ValueError, match="source_maxlength = 5000 is above the maximum, 1224"):
        Ranker.from_pretrained(tiny_checkpoint, source_maxlength=5000)
    raised = Ranker.from_pretrained(tiny_checkpoint, source_maxlength=5000, max_source_length=5000)
    assert raised.source_maxlength == 5000 and raised.max_source_length == 5000
    # It raises the maximum, never lowers it below the checkpoint's own (a lower cap is the server's setting).
    assert Ranker.from_pretrained(tiny_checkpoint, max_source_length=16).max_source_length == 1224


def test_a_too_small_length_says_the_minimum_in_the_users_words(ranker):
    with pytest.raises(ValueError, match=r"source_maxlength = 1 is too small: it must be >= 3 \(a piece's "
                                         r"\[CLS\], its marker and \[SEP\]\)"):
        ranker.rank([Q], [CANDS], source_maxlength=1)
    ranker.rank([Q], [CANDS], source_maxlength=3, candidate_maxlength=3)  # the minimum runs


def test_blender_refuses_a_length_above_the_maximum(tiny_checkpoint):
    from blender_fast import Blender

    with pytest.raises(ValueError, match="candidate_maxlength = 100000 is above the maximum, 412"):
        Blender().loadranker(str(tiny_checkpoint), device="cpu", candidate_maxlength=100000)


@pytest.mark.parametrize("verb,kwargs", [
    ("rank", dict(return_scores="no")), ("rank", dict(progress="yes")), ("select", dict(worst=1)),
    ("judge", dict(shuffle_order="false")), ("judge", dict(return_scores=0))])
def test_booleans_are_booleans(ranker, verb, kwargs):
    name = next(iter(kwargs))
    args = ([Q], [CANDS[:2]]) if verb == "judge" else ([Q], [CANDS])
    with pytest.raises(ValueError, match=rf"{name} must be True or False, got {kwargs[name]!r}"):
        getattr(ranker, verb)(*args, **kwargs)


def test_from_pretrained_checks_its_booleans(tiny_checkpoint):
    with pytest.raises(ValueError, match="progress must be True or False, got 'no'"):
        Ranker.from_pretrained(tiny_checkpoint, progress="no")


def _ranks_in_child(pickled: bytes):
    r = pickle.loads(pickled)
    return r.rank([Q], [CANDS], return_scores=True), r.source_maxlength


def test_a_ranker_pickles_by_its_source_and_ranks_the_same_in_a_spawned_process(tiny_checkpoint):
    ranker = Ranker.from_pretrained(tiny_checkpoint, threads=1, precision="fp32")
    ranker.source_maxlength = 200  # a setting changed after loading travels too
    want = ranker.rank([Q], [CANDS], return_scores=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got, src_len = pool.apply(_ranks_in_child, (pickle.dumps(ranker),))
    assert src_len == 200
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_deepcopy_shares_the_model_and_owns_its_settings(ranker):
    twin = copy.deepcopy(ranker)
    assert twin.model is ranker.model and twin.extra_models is not ranker.extra_models
    twin.source_maxlength = 100
    assert ranker.source_maxlength != 100
    np.testing.assert_array_equal(twin.rank([Q], [CANDS]), ranker.rank([Q], [CANDS]))


def test_a_ranker_constructed_directly_refuses_pickling_saying_what_to_pass(ranker):
    direct = Ranker(ranker.model, ranker.tokenizer, ranker.source_maxlength, ranker.candidate_maxlength)
    with pytest.raises(TypeError, match=r"constructed directly cannot be pickled.*Ranker.from_pretrained"):
        pickle.dumps(direct)


# -- texts cut by characters before tokenizing (issue 25.1) ------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from blender_fast.model.tokenization import cut_before_tokenizing, encode_prompts  # noqa: E402

# Spaces and their runs, other whitespace, long words, non-ASCII, combining marks, what normalisers fold.
PIECES = st.sampled_from([" ", "  ", " " * 40, "\t", "\n", "\u00a0", "\u3000", "a", "word", "x" * 60, "é",
                          "e\u0301", "日本語", "🙂", "''", "``", "ﬁ", "Ⅻ", "-", ".", "<|source|>", "[SEP]", "1234"])
TEXTS = st.lists(PIECES, max_size=120).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, keep=st.integers(1, 30))
def test_the_character_cut_keeps_the_same_tokens(ranker, text, keep):
    tok = ranker.tokenizer.tokenizer
    for special in (True, False):
        full = tok.encode(text, add_special_tokens=special).ids
        [cut] = cut_before_tokenizing(tok, [text], [keep], add_special_tokens=special)
        assert text.startswith(cut)
        ids = tok.encode(cut, add_special_tokens=special).ids
        assert ids[:keep] == full[:keep] and (len(ids) > keep) == (len(full) > keep)


def _kept(enc):
    """Each piece's kept tokens, as the packer keeps them (its first ``limit``)."""
    return [enc.tokens[a:b][:lim].tolist() for a, b, lim in zip(enc.offsets[:-1], enc.offsets[1:], enc.limits)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src=TEXTS, cands=st.lists(TEXTS, min_size=2, max_size=3), s=st.integers(3, 20), c=st.integers(3, 20))
def test_encoded_prompts_are_the_same_with_and_without_the_cut(ranker, monkeypatch, src, cands, s, c):
    import blender_fast.model.tokenization as tokenization

    got = encode_prompts(ranker.tokenizer, [src], [cands], s, c)
    with monkeypatch.context() as m:
        m.setattr(tokenization, "CUT_CHARS_PER_TOKEN", 10**9)  # never cut: the plain twin
        want = encode_prompts(ranker.tokenizer, [src], [cands], s, c)
    assert _kept(got) == _kept(want)
    np.testing.assert_array_equal(got.limits, want.limits)


def test_a_huge_text_is_cut_before_tokenizing(ranker):
    # 3 MB of words: tokenizing it whole is what the cut avoids; the answer is the same as a short prefix's.
    huge = "lorem ipsum dolor sit amet " * 120_000
    [cut] = cut_before_tokenizing(ranker.tokenizer.tokenizer, [huge], [ranker.source_maxlength], True)
    assert len(cut) < 20 * ranker.source_maxlength
    np.testing.assert_array_equal(ranker.rank([huge], [CANDS], return_scores=True),
                                  ranker.rank([huge[:200_000]], [CANDS], return_scores=True))


# -- a damaged generated-checkpoint manifest (issue 25.6) ---------------------------------------------

@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"note": "no generator"}'])
def test_a_damaged_generated_manifest_is_an_error_naming_the_file(tiny_checkpoint, tmp_path, damage):
    import os
    import shutil
    import subprocess
    import sys

    from blender_fast.model.checkpoint import CheckpointError
    from blender_fast.synthetic.demo import random_weights_notice

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    assert random_weights_notice(ckpt)  # intact: the notice
    (ckpt / "blender_fast.json").write_text(damage)
    with pytest.raises(CheckpointError, match=rf"{ckpt / 'blender_fast.json'}: the generated checkpoint's manifest "
                                              r"is damaged"):
        random_weights_notice(ckpt)
    data = tmp_path / "in.jsonl"
    data.write_text('{"input": "q", "candidates": ["a", "b"]}\n')
    proc = subprocess.run([sys.executable, "-m", "blender_fast.cli", "rank", "--model", str(ckpt), "--input",
                           str(data), "--output", str(tmp_path / "out.jsonl")], capture_output=True, text=True,
                          env={**os.environ}, timeout=300)
    assert proc.returncode != 0 and "blender_fast.json: the generated checkpoint's manifest is damaged" in proc.stderr
    assert "Traceback" not in proc.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=3), limit=st.integers(2, 30))
def test_the_reward_models_truncation_is_the_same_with_and_without_the_cut(tiny_reward_model, monkeypatch, texts,
                                                                            limit):
    import blender_fast.model.tokenization as tokenization

    tok = _reward_tokenizer(tiny_reward_model)
    got = tok.truncate(texts, limit)
    with monkeypatch.context() as m:
        m.setattr(tokenization, "CUT_CHARS_PER_TOKEN", 10**9)  # never cut: the plain twin
        assert got == tok.truncate(texts, limit)


_REWARD_TOKENIZERS: dict = {}


def _reward_tokenizer(path):
    from blender_fast.model.reward import build_pointwise_tokenizer, load_pointwise_checkpoint

    if path not in _REWARD_TOKENIZERS:
        _REWARD_TOKENIZERS[path] = build_pointwise_tokenizer(load_pointwise_checkpoint(path))
    return _REWARD_TOKENIZERS[path]


def test_a_shorter_source_leaves_its_spare_half_to_the_candidates(ranker):
    # PairRM's own rule (encode_prompts): the maximum of a candidate grows by half the source's unused tokens.
    most = ranker.max_candidate_length + (ranker.max_source_length - 100) // 2
    ranker.rank([Q], [CANDS], source_maxlength=100, candidate_maxlength=most)
    with pytest.raises(ValueError, match=rf"candidate_maxlength = {most + 1} is above the maximum, {most}"):
        ranker.rank([Q], [CANDS], source_maxlength=100, candidate_maxlength=most + 1)
