"""Tests of blender_fast.synthetic: random-weight PairRM / fuser checkpoints.

Everything here runs offline on the ``tiny`` shapes; the checkpoints are built once per module.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys
import warnings

import pytest

from conftest import load_shared_records, require

torch = require("torch")
transformers = require("transformers")
require("sentencepiece")
require("safetensors")

with warnings.catch_warnings():
    # transformers' DeBERTa decorates helpers with torch.jit.script, deprecated at import by torch 2.x (an
    # error under pytest). The generator no longer imports it (numpy writes the weights), so the module is
    # imported here once, before llm-blender and transformers' Auto classes reach it, as the engine's
    # export does (model/export.py).
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
    import transformers.models.deberta_v2.modeling_deberta_v2  # noqa: F401

from blender_fast import synthetic as mc
from blender_fast.model.checkpoint import llm_blender_model_name  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]

_SAMPLE_INPUTS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Write a haiku about autumn.",
]
_SAMPLE_CANDIDATES = [
    ["Paris is the capital of France.", "The capital is Lyon.",
     "France's capital city is Paris, which is also its largest city.", "I don't know."],
    ["Put the egg in boiling water for about nine minutes, then cool it in cold water.",
     "Use a pan.", "Cover the egg with water, bring it to a boil, and wait ten minutes.",
     "Eggs come from chickens."],
    ["Red leaves drifting down / the cold wind whispers softly / autumn says goodbye",
     "Autumn is a season.", "Leaves fall, sky is grey, I drink my tea.",
     "Haiku are short Japanese poems."],
]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """No hub access: everything must load from the generated directories."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module", autouse=True)
def _tiny_models_use_one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def ckdir(tmp_path_factory):
    return tmp_path_factory.mktemp("make_checkpoint")


@pytest.fixture(scope="module")
def ranker_st(ckdir):
    return mc.make_ranker_checkpoint(ckdir / "ranker_st", "tiny", seed=0)


@pytest.fixture(scope="module")
def ranker_bin(ckdir):
    return mc.make_ranker_checkpoint(ckdir / "ranker_bin", "tiny", seed=0, weights_format="bin")


@pytest.fixture(scope="module")
def ranker_hf(ckdir):
    return mc.make_ranker_checkpoint(ckdir / "ranker_hf", "tiny", seed=0, layout="hf")


@pytest.fixture(scope="module")
def fuser(ckdir):
    return mc.make_fuser_checkpoint(ckdir / "fuser", "tiny", seed=0)


def _weights_path(d: pathlib.Path) -> pathlib.Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).exists():
            return d / name
    raise FileNotFoundError(d)


def _load_state(path: pathlib.Path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _load_blender_ranker(d: pathlib.Path, caplog):
    llm_blender = require("llm_blender")  # noqa: F841  (the reference)
    from llm_blender.blender.blender import Blender

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        blender = Blender()
        blender.loadranker(str(d), device="cpu", model_name=llm_blender_model_name(d))
    bad = [r.getMessage() for r in caplog.records
           if "Missing keys" in r.getMessage() or "Unexpected keys" in r.getMessage()]
    assert not bad, bad
    return blender


def _pairwise_logits(blender):
    """llm-blender's full comparison matrix (n_inputs, n_cands, n_cands) on the sample prompts."""
    from llm_blender.blender.blender_utils import RankerDataset

    ds = RankerDataset(_SAMPLE_INPUTS, [list(c) for c in _SAMPLE_CANDIDATES])
    batch = blender.ranker_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = blender.ranker._full_predict(**{k: v for k, v in batch.items() if v is not None})
    return out["logits"].double()


def _shared_texts(n_records: int = 60):
    texts = []
    for rec in load_shared_records(n_records):
        texts.append(rec["instruction"])
        texts.extend(c["text"] for c in rec["candidates"])
    return texts


# ---------------------------------------------------------------------------------------------
# ranker: loading by llm-blender 0.0.2 itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_llm_blender_loads_ranker(fmt, ranker_st, ranker_bin, caplog):
    d = ranker_st if fmt == "safetensors" else ranker_bin
    assert (d / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")).is_file()
    blender = _load_blender_ranker(d, caplog)

    # The ranker really carries the generated weights (nothing left from the backbone init).
    file_state = _load_state(_weights_path(d))
    loaded = blender.ranker.state_dict()
    assert set(file_state) <= set(loaded)
    assert set(k for k in loaded if k.startswith(("pretrained_model.", "head_layer."))) == set(file_state)
    for k, v in file_state.items():
        assert torch.equal(loaded[k].float(), v.float()), k

    meta = json.loads((d / "blender_fast.json").read_text())
    emb = blender.ranker.pretrained_model.embeddings.word_embeddings.weight
    assert emb.shape[0] == meta["vocab_size"] == len(blender.ranker_tokenizer)

    scores = blender.rank(_SAMPLE_INPUTS, [list(c) for c in _SAMPLE_CANDIDATES],
                          return_scores=True, batch_size=2, disable_tqdm=True)
    assert scores.shape == (3, 4)
    assert torch.isfinite(torch.as_tensor(scores)).all()
    assert float(torch.as_tensor(scores).std()) > 0.05  # not degenerate

    logits = _pairwise_logits(blender)
    n = logits.shape[-1]
    off_diag = logits[:, ~torch.eye(n, dtype=torch.bool)]
    assert 0.3 < float(off_diag.std()) < 3.0, off_diag
    # content, not a constant position offset, dominates
    assert abs(float(off_diag.mean())) < float(off_diag.std())


def test_checkpoint_layout_and_configs(ranker_st):
    d = ranker_st
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["ranker_type"] == "pairranker" and cfg["model_type"] == "deberta"
    # relative to the checkpoint, so a copy uses its own backbone (was: the absolute path of d/backbone)
    assert cfg["model_name"] == "backbone"
    assert llm_blender_model_name(d) == str(d / "backbone")
    assert (cfg["source_maxlength"], cfg["candidate_maxlength"]) == (1224, 412)
    for key in ("n_tasks", "num_pos", "num_neg", "sub_sampling_mode", "sub_sampling_ratio",
                "loss_type", "reduce_type", "inference_mode", "drop_out", "fp16", "device",
                "cache_dir", "load_checkpoint"):
        assert key in cfg
    tokenizer_files = ("spm.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    for name in tokenizer_files + ("added_tokens.json", "blender_fast.json", "model.safetensors"):
        assert (d / name).is_file(), name
    for name in tokenizer_files + ("config.json", "model.safetensors"):
        assert (d / "backbone" / name).is_file(), name
    tc = json.loads((d / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "DebertaV2Tokenizer"
    meta = json.loads((d / "blender_fast.json").read_text())
    assert meta["generator"] == mc.GENERATOR and meta["shape"] == "tiny" and meta["seed"] == 0
    assert "meaningless" in meta["note"]

    bb = transformers.AutoConfig.from_pretrained(str(d / "backbone"))
    assert bb.model_type == "deberta-v2"
    assert (bb.hidden_size, bb.num_hidden_layers, bb.num_attention_heads, bb.intermediate_size) == (32, 2, 2, 64)
    assert bb.relative_attention and bb.pos_att_type == ["p2c", "c2p"] and bb.position_buckets == 256
    assert bb.vocab_size == meta["spm_pieces"] + 100  # like deberta-v3's 128100 rows
    from safetensors import safe_open

    with safe_open(str(d / "backbone" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}


def test_prefix_token_ids_match_llm_blender_collator(ranker_st):
    require("llm_blender")
    from llm_blender.pair_ranker.collator import CrossCompareCollator

    d = ranker_st
    added = json.loads((d / "added_tokens.json").read_text())
    base = transformers.AutoTokenizer.from_pretrained(str(d / "backbone"))
    n_base = len(base)  # spm pieces + [MASK]
    meta = json.loads((d / "blender_fast.json").read_text())
    assert n_base == meta["spm_pieces"] + 1
    expected = {tok: n_base + i for i, tok in enumerate(mc.PREFIX_TOKENS)}
    assert {k: v for k, v in added.items() if k in expected} == expected
    assert added["[MASK]"] == n_base - 1

    # what llm-blender assigns, starting from the backbone tokenizer (its load path) ...
    CrossCompareCollator(1224, base, 412)
    got = [base.source_prefix_id, base.cand1_prefix_id, base.cand2_prefix_id, base.cand_prefix_id]
    assert got == [expected[t] for t in mc.PREFIX_TOKENS]
    assert len(base) == meta["vocab_size"]
    # ... and from the checkpoint's own tokenizer (already has them: add_tokens is a no-op)
    own = transformers.AutoTokenizer.from_pretrained(str(d))
    assert len(own) == meta["vocab_size"]
    CrossCompareCollator(1224, own, 412)
    assert [own.source_prefix_id, own.cand1_prefix_id, own.cand2_prefix_id, own.cand_prefix_id] == got
    assert len(own) == meta["vocab_size"]
    assert meta["prefix_token_ids"] == got


def test_hf_layout_plain_torch_rebuild(ranker_hf, ranker_st, caplog):
    d = ranker_hf
    cfg_json = json.loads((d / "config.json").read_text())
    assert cfg_json["architectures"] == ["DebertaV2PairRM"]
    assert cfg_json["model_type"] == "deberta-v2"
    for key in ("n_tasks", "drop_out", "source_prefix_id", "cand1_prefix_id", "cand2_prefix_id",
                "cand_prefix_id", "sep_token_id"):
        assert key in cfg_json, key
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    assert [cfg_json["source_prefix_id"], cfg_json["cand1_prefix_id"], cfg_json["cand2_prefix_id"],
            cfg_json["cand_prefix_id"]] == tok.convert_tokens_to_ids(list(mc.PREFIX_TOKENS))
    assert cfg_json["sep_token_id"] == tok.sep_token_id

    config = transformers.DebertaV2Config.from_pretrained(str(d))
    backbone = transformers.DebertaV2Model(config).eval()
    h = config.hidden_size
    head = torch.nn.Sequential(torch.nn.Dropout(0.05), torch.nn.Linear(2 * h, h), torch.nn.Tanh(),
                               torch.nn.Dropout(0.05), torch.nn.Linear(h, config.n_tasks)).eval()
    state = _load_state(_weights_path(d))
    pm = {k[len("pretrained_model."):]: v for k, v in state.items() if k.startswith("pretrained_model.")}
    hl = {k[len("head_layer."):]: v for k, v in state.items() if k.startswith("head_layer.")}
    assert len(pm) + len(hl) == len(state)
    backbone.load_state_dict(pm, strict=True)
    head.load_state_dict(hl, strict=True)
    assert set(hl) == {"1.weight", "1.bias", "4.weight", "4.bias"}

    # same seed => same weights as the llm-blender layout
    st_state = _load_state(_weights_path(ranker_st))
    assert set(st_state) == set(state)
    assert all(torch.equal(st_state[k], state[k]) for k in state)

    # the rebuild computes the same pair logit as llm-blender's ranker
    def ids_of(text_prefix, text):
        return tok(text_prefix + text)["input_ids"]

    src, a, b = _SAMPLE_INPUTS[0], _SAMPLE_CANDIDATES[0][0], _SAMPLE_CANDIDATES[0][2]
    seq = ids_of("<|source|>", src) + ids_of("<|candidate1|>", a) + ids_of("<|candidate2|>", b)
    x = torch.tensor([seq])
    with torch.no_grad():
        enc = backbone(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
        pos = {t: seq.index(cfg_json[k]) for t, k in
               (("s", "source_prefix_id"), ("c1", "cand1_prefix_id"), ("c2", "cand2_prefix_id"))}
        mine = float((head(torch.cat([enc[pos["s"]], enc[pos["c1"]]])) -
                      head(torch.cat([enc[pos["s"]], enc[pos["c2"]]]))).mean())

    if importlib.util.find_spec("llm_blender") is None:
        return
    blender = _load_blender_ranker(ranker_st, caplog)
    ref = blender.compare([src], [a], [b], return_logits=True, batch_size=1, mode="[A,B]",
                          disable_tqdm=True)
    assert mine == pytest.approx(float(ref[0]), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------


def _files(d: pathlib.Path):
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())


def test_same_seed_identical_different_seed_differs(ranker_st, ckdir):
    again = mc.make_ranker_checkpoint(ckdir / "ranker_st_again", "tiny", seed=0)
    other = mc.make_ranker_checkpoint(ckdir / "ranker_seed1", "tiny", seed=1)
    assert _files(again) == _files(ranker_st)
    for rel in _files(ranker_st):  # every file, config.json too (model_name is relative)
        assert (ranker_st / rel).read_bytes() == (again / rel).read_bytes(), rel
    # a different seed: different weights, same tokenizer
    assert (other / "model.safetensors").read_bytes() != (ranker_st / "model.safetensors").read_bytes()
    assert (other / "backbone" / "model.safetensors").read_bytes() != \
        (ranker_st / "backbone" / "model.safetensors").read_bytes()
    for name in ("spm.model", "tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        assert (other / name).read_bytes() == (ranker_st / name).read_bytes(), name


def test_fuser_deterministic(fuser, ckdir):
    again = mc.make_fuser_checkpoint(ckdir / "fuser_again", "tiny", seed=0)
    for rel in _files(fuser):
        assert (fuser / rel).read_bytes() == (again / rel).read_bytes(), rel


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------


def test_tokens_per_word_on_shared_data(ranker_st):
    texts = _shared_texts()
    fast = transformers.AutoTokenizer.from_pretrained(str(ranker_st))
    assert type(fast).__name__ == "DebertaV2TokenizerFast"
    ids = fast(texts, add_special_tokens=False)["input_ids"]
    n_tokens = sum(map(len, ids))
    n_words = sum(len(t.split()) for t in texts)
    ratio = n_tokens / n_words
    assert 1.2 <= ratio <= 1.6, ratio
    unk = sum(i.count(fast.unk_token_id) for i in ids)
    assert unk / n_tokens < 0.002

    # the slow (sentencepiece) tokenizer agrees with tokenizer.json (exact ties aside)
    slow = transformers.DebertaV2Tokenizer.from_pretrained(str(ranker_st))
    sample = texts[:150]
    mismatches = sum(slow(t, add_special_tokens=False)["input_ids"] != i for t, i in zip(sample, ids))
    assert mismatches <= 1, mismatches


@pytest.mark.slow
def test_tokenizer_training_is_reproducible(tmp_path):
    """A cold (uncached) training run in a fresh process gives the same bytes."""
    code = ("import hashlib, blender_fast.synthetic as m; "
            "print(hashlib.sha256(m.english_spm_model('deberta')).hexdigest())")
    env = dict(os.environ, BLENDER_FAST_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO), env=env,
                         capture_output=True, text=True).stdout.split()[-1]
    assert list((tmp_path / "cache" / "spm").glob("deberta-*.model"))
    assert out == hashlib.sha256(mc.english_spm_model("deberta")).hexdigest()


def test_padded_vocab_fillers_never_match_text():
    spm = require("sentencepiece")
    small = spm.SentencePieceProcessor(model_proto=mc.english_spm_model("deberta"))
    big = spm.SentencePieceProcessor(model_proto=mc.english_spm_model("deberta", mc.DEBERTA_V3_SPM_PIECES))
    assert big.get_piece_size() == mc.DEBERTA_V3_SPM_PIECES
    assert [big.id_to_piece(i) for i in range(4)] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    texts = [t for _, cands in mc.CALIBRATION_EXAMPLES for t in cands] + _SAMPLE_INPUTS + [
        "Ünïcödé, emoji 😀, symbols ≥ ≤ → and CJK 中文 are fine.\n\n  Multiple   spaces."]
    assert [big.encode(t) for t in texts] == [small.encode(t) for t in texts]
    assert mc.PAIRRM_EMBEDDING_ROWS == mc.DEBERTA_V3_SPM_PIECES + 1 + 4 == 128005


# ---------------------------------------------------------------------------------------------
# large (config only)
# ---------------------------------------------------------------------------------------------


def test_large_config_and_parameter_count():
    real = mc.ranker_backbone_config("large", mc.PAIRRM_LARGE_BACKBONE["vocab_size"]).to_dict()
    for key, value in mc.PAIRRM_LARGE_BACKBONE.items():
        assert real[key] == value, key

    cfg = mc.ranker_backbone_config("large", mc.PAIRRM_EMBEDDING_ROWS)
    with torch.device("meta"):
        backbone = transformers.DebertaV2Model(cfg)
        h = cfg.hidden_size
        head = torch.nn.Sequential(torch.nn.Dropout(0.05), torch.nn.Linear(2 * h, h), torch.nn.Tanh(),
                                   torch.nn.Dropout(0.05), torch.nn.Linear(h, 1))
    assert backbone.embeddings.word_embeddings.weight.shape == (128005, 1024)
    n_params = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in head.parameters())
    assert abs(n_params - 435e6) / 435e6 < 0.01, n_params


# ---------------------------------------------------------------------------------------------
# fuser
# ---------------------------------------------------------------------------------------------


def test_fuser_loads_and_generates(fuser):
    tok = transformers.AutoTokenizer.from_pretrained(str(fuser))
    assert type(tok).__name__ == "T5TokenizerFast"
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100
    slow = transformers.T5Tokenizer.from_pretrained(str(fuser))
    text = "Instruction: Say hi</s>Candidate 0: <extra_id_0>:Hello there!</s>Summarize candidates:"
    assert slow(text)["input_ids"] == tok(text)["input_ids"]

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(fuser)).eval()
    assert model.config.feed_forward_proj == "gated-gelu" and not model.config.tie_word_embeddings
    assert model.config.vocab_size >= len(tok)
    distinct = []
    with torch.no_grad():
        for src, cands in mc.CALIBRATION_EXAMPLES:
            enc = tok(f"Instruction: {src}</s>Candidate 0: <extra_id_0>:{cands[0]}", return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=16, do_sample=False, num_beams=1)[0, 1:].tolist()
            if tok.eos_token_id in out:
                out = out[: out.index(tok.eos_token_id)]
            distinct.append(len(set(out) - {tok.pad_token_id}))
    assert max(distinct) >= 5, distinct

    require("llm_blender")
    from llm_blender.blender.blender import Blender

    blender = Blender()
    blender.loadfuser(str(fuser), device="cpu")
    outs = blender.fuse(_SAMPLE_INPUTS[:2], [c[:2] for c in _SAMPLE_CANDIDATES[:2]],
                        instructions=["", ""], batch_size=2, max_new_tokens=8, num_beams=1)
    assert len(outs) == 2 and all(isinstance(o, str) and o.strip() for o in outs)


# ---------------------------------------------------------------------------------------------
# misc
# ---------------------------------------------------------------------------------------------


def test_import_is_light_and_arguments_are_checked(tmp_path):
    code = ("import sys, blender_fast.synthetic as m; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO))
    with pytest.raises(ValueError):
        mc.make_ranker_checkpoint(tmp_path / "x", "huge")
    with pytest.raises(ValueError):
        mc.make_ranker_checkpoint(tmp_path / "x", "tiny", weights_format="onnx")
    with pytest.raises(ValueError):
        mc.make_ranker_checkpoint(tmp_path / "x", "tiny", layout="other")
    with pytest.raises(ValueError):
        mc.make_fuser_checkpoint(tmp_path / "x", "huge")


# ---------------------------------------------------------------------------------------------
# layout of the subpackage
# ---------------------------------------------------------------------------------------------


def test_word_lists_are_package_data():
    from blender_fast.synthetic import tokenizer

    assert tokenizer.WORDS_FILE.parent == pathlib.Path(mc.__file__).parent
    lists = tokenizer.word_lists()
    assert list(lists) == list(tokenizer.WORD_SECTIONS)
    assert all(text.startswith("\n") and text.endswith("\n") and len(text.split()) > 20 for text in lists.values())
    assert "the" in lists["function_words"].split() and "café" in lists["symbol_words"].split()


def test_ranker_reuses_the_engine_constants_and_module_names(ranker_st):
    from blender_fast.model.checkpoint import DEBERTA_V3_LARGE, PAIRRM_CANDIDATE_MAXLENGTH, PAIRRM_SOURCE_MAXLENGTH, SPECIAL_TOKENS
    from blender_fast.model.export import pairrm_module
    from blender_fast.synthetic import pairrm_checkpoint
    from safetensors.numpy import load_file

    assert mc.PREFIX_TOKENS is SPECIAL_TOKENS
    assert pairrm_checkpoint.RANKER_SHAPES["large"]["hidden_size"] == DEBERTA_V3_LARGE["hidden_size"]
    defaults = pairrm_checkpoint._RANKER_CONFIG_DEFAULTS
    assert (defaults["source_maxlength"], defaults["candidate_maxlength"]) == (PAIRRM_SOURCE_MAXLENGTH, PAIRRM_CANDIDATE_MAXLENGTH)
    # the numpy-written weights are the engine module's state dict: same names, shapes and dtypes
    meta = json.loads((ranker_st / "blender_fast.json").read_text())
    module = pairrm_module(mc.ranker_backbone_config("tiny", meta["vocab_size"]))
    expected = {k: (tuple(v.shape), str(v.dtype)) for k, v in module.state_dict().items()}
    written = {k: (tuple(v.shape), "torch." + str(v.dtype)) for k, v in load_file(str(ranker_st / "model.safetensors")).items()}
    assert written == expected


def test_backbone_config_json_is_transformers_config():
    """The config.json written without transformers holds what DebertaV2Config.save_pretrained writes."""
    for shape in ("tiny", "large"):
        cfg = mc.ranker_backbone_config(shape, 1234)
        cfg.architectures = ["DebertaV2Model"]
        want = json.loads(cfg.to_json_string(use_diff=True))
        got = mc.backbone_config_json(shape, 1234, architectures=["DebertaV2Model"])
        want.pop("transformers_version"), got.pop("transformers_version")
        assert got == want, shape


def test_lean_checkpoint_has_no_second_weights_copy(ckdir, ranker_st):
    lean = mc.make_ranker_checkpoint(ckdir / "lean", "tiny", seed=0, backbone_weights=False)
    assert sorted(p.name for p in (lean / "backbone").iterdir()) == ["config.json"]
    assert (lean / "model.safetensors").read_bytes() == (ranker_st / "model.safetensors").read_bytes()
    assert (lean / "backbone" / "config.json").read_bytes() == (ranker_st / "backbone" / "config.json").read_bytes()
    assert json.loads((lean / "blender_fast.json").read_text())["backbone_weights"] is False


def test_make_checkpoint_has_one_command_line():
    assert not (pathlib.Path(mc.__file__).parent.parent / "make_checkpoint.py").exists()
    assert not any(hasattr(m, "_main") for m in (mc, mc.pairrm_checkpoint, mc.fuser_checkpoint,
                                                  mc.reward_checkpoint, mc.tokenizer))
    # no module name repeated at two levels of blender_fast/ (issue 26): the old names are gone
    package = pathlib.Path(mc.__file__).parent
    assert not any((package / name).exists() for name in ("ranker.py", "fuser.py", "reward_model.py"))


def test_make_checkpoint_fuser_prints_no_third_party_notice(tmp_path):
    """Issue 28 item 8: `make-checkpoint --kind fuser` printed transformers' "You set `add_prefix_space`"
    notice (the slow-to-fast conversion it announces is what the generator wants). A fresh process: the
    notice is logged once per process."""
    out = subprocess.run([sys.executable, "-m", "blender_fast.cli", "make-checkpoint", "--kind", "fuser",
                          "--shape", "tiny", str(tmp_path / "fuser")], cwd=str(REPO), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "fuser" / "tokenizer.json").is_file()
    assert "add_prefix_space" not in out.stderr + out.stdout
    assert "wrote fuser checkpoint" in out.stdout + out.stderr


def test_statement_nodes_are_ast_walks_docstring_owners_in_its_order():
    """The pruned walk the demo tokenizer's corpus is read with (synthetic/tokenizer.statement_nodes) finds
    the same modules, classes and functions as ast.walk, in the same order (the word counts, and so the
    trained tokenizer, depend on it): nested defs under if/try/except/with/match/class, and a lambda and a
    comprehension (expressions, which hold no statements), plus a slice of the standard library."""
    import ast
    import sysconfig
    from pathlib import Path

    from blender_fast.synthetic.tokenizer import statement_nodes

    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    source = '''
"""m"""
if True:
    def a():
        """a"""
        f = lambda: [x for x in ()]
        class B:
            """B"""
            async def c(self):
                """c"""
try:
    def d():
        """d"""
except Exception:
    def e():
        """e"""
finally:
    with open("x") as f:
        def g():
            """g"""
match 1:
    case 1:
        def h():
            """h"""
'''
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    trees = [ast.parse(source)] + [ast.parse(p.read_bytes()) for p in sorted(stdlib.glob("*.py"))[:40]]
    for tree in trees:
        walked = [n for n in ast.walk(tree) if isinstance(n, owners)]
        pruned = [n for n in statement_nodes(tree) if isinstance(n, owners)]
        assert pruned == walked
    found = {ast.get_docstring(n) for n in statement_nodes(trees[0]) if isinstance(n, owners)}
    assert found == set("madBcegh")
