"""The generated ranker / reward model are written with numpy (no torch, no transformers), and their
tokenizers load without transformers (model/fast_tokenizer.py) with the ids transformers gives.

Oracles: torch.load for the torch-free pytorch_model.bin writer, transformers' AutoTokenizer for the
tokenizer, sentencepiece for the SentencePiece proto parser, torch forward passes for the logits' spread.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from conftest import load_shared_records, require

torch = require("torch")
transformers = require("transformers")
require("safetensors")

with warnings.catch_warnings():
    # transformers' DeBERTa uses torch.jit.script, deprecated at import by torch 2.x (an error under
    # pytest): imported once here, as the engine's export does (model/export.py)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
    import transformers.models.deberta_v2.modeling_deberta_v2  # noqa: F401

from blender_fast import synthetic as mc  # noqa: E402
from blender_fast.model.checkpoint import SPECIAL_TOKENS, CheckpointError  # noqa: E402
from blender_fast.model.fast_tokenizer import load_tokenizer, pair_tokenizer_parts, parse_spm_model  # noqa: E402
from blender_fast.synthetic.torch_zip import save_torch_zip  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("numpy_ckpt")
    return {
        "st": mc.make_ranker_checkpoint(root / "st", "tiny", seed=0),
        "bin": mc.make_ranker_checkpoint(root / "bin", "tiny", seed=0, weights_format="bin"),
        "hf": mc.make_ranker_checkpoint(root / "hf", "tiny", seed=0, layout="hf"),
        "rm": mc.make_reward_model_checkpoint(root / "rm", "tiny", seed=0),
        "rm_bin": mc.make_reward_model_checkpoint(root / "rm_bin", "tiny", seed=0, weights_format="bin"),
    }


def _safetensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


# -- no torch, no transformers ---------------------------------------------------------------------------


def test_generating_imports_neither_torch_nor_transformers(tmp_path):
    code = f"""
import sys
import blender_fast.synthetic as m
from blender_fast.model.fast_tokenizer import pair_tokenizer_parts
out = {str(tmp_path)!r}
m.make_ranker_checkpoint(out + "/st", "tiny", seed=0)
m.make_ranker_checkpoint(out + "/bin", "tiny", seed=0, weights_format="bin", layout="hf")
m.make_reward_model_checkpoint(out + "/rm", "tiny", seed=0, weights_format="bin")
tok, sep, pad, ids = pair_tokenizer_parts(out + "/st")
assert ids == [tok.token_to_id(t) for t in {list(SPECIAL_TOKENS)!r}]
loaded = [name for name in ("torch", "transformers") if name in sys.modules]
assert not loaded, loaded
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr[-2000:]
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file() and (tmp_path / "rm" / "pytorch_model.bin").is_file()


# -- pytorch_model.bin without torch ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ranker", "reward_model"])
def test_bin_reads_back_equal_with_torch_load(made, kind):
    st_dir, bin_dir = (made["st"], made["bin"]) if kind == "ranker" else (made["rm"], made["rm_bin"])
    want = _safetensors(st_dir / "model.safetensors")
    got = torch.load(str(bin_dir / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == torch.float32 and got[name].is_contiguous(), name
        assert np.array_equal(got[name].numpy(), array), name


def test_torch_zip_dtypes_shapes_alignment_and_mmap(tmp_path):
    rng = np.random.default_rng(1)
    state = {
        "w": rng.standard_normal((300, 7), dtype=np.float32),
        "half": rng.standard_normal((5, 4, 3)).astype(np.float16),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "long": np.arange(70_000, dtype=np.int64),
    }
    path = save_torch_zip(state, tmp_path / "pytorch_model.bin")
    for mmap in (False, True):
        got = torch.load(str(path), weights_only=True, mmap=mmap)
        assert list(got) == list(state)
        for name, array in state.items():
            assert tuple(got[name].shape) == array.shape, name
            assert np.array_equal(got[name].numpy(), array), name
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[0] == "pytorch_model/data.pkl" and "pytorch_model/version" in names
        for info in zf.infolist():  # data 64-byte aligned, as torch writes it (mmap loading relies on it)
            assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0, info.filename
    # what torch itself writes for the same tensors reads back identically
    ref = tmp_path / "ref.bin"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(ref))
    again = torch.load(str(ref), weights_only=True)
    assert all(torch.equal(again[k], got[k]) for k in state)


def test_torch_zip_rejects_an_unknown_dtype(tmp_path):
    with pytest.raises(ValueError, match="complex64"):
        save_torch_zip({"x": np.zeros(2, np.complex64)}, tmp_path / "x.bin")


# -- the logits are finite and spread ---------------------------------------------------------------------


def _calibration_pair_ids(tok_dir: pathlib.Path):
    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    seqs = []
    for source, cands in mc.CALIBRATION_EXAMPLES:
        src = tok(SPECIAL_TOKENS[0] + source)["input_ids"]
        enc = [tok(SPECIAL_TOKENS[3] + c)["input_ids"] for c in cands]
        for i, a in enumerate(enc):
            for j, b in enumerate(enc):
                if i != j:
                    seqs.append(src + [ids[1] if t == ids[3] else t for t in a]
                                + [ids[2] if t == ids[3] else t for t in b])
    return seqs, ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranker_pair_logits_finite_and_spread(tmp_path, seed, one_torch_thread):
    """The numpy initialisation (gain, candidate-2 row, head scale) gives content-dependent pair logits of
    std ~1, as the torch calibration it replaces did (checked on the engine's own torch module)."""
    from blender_fast.model.export import pairrm_module

    d = mc.make_ranker_checkpoint(tmp_path / "r", "tiny", seed=seed, backbone_weights=False)
    meta = json.loads((d / "blender_fast.json").read_text())
    module = pairrm_module(mc.ranker_backbone_config("tiny", meta["vocab_size"])).eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in _safetensors(d / "model.safetensors").items()})
    seqs, ids = _calibration_pair_ids(d)
    width = max(map(len, seqs))
    x = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(x)
    pos = torch.zeros((len(seqs), 3), dtype=torch.long)
    for r, s in enumerate(seqs):
        x[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
        pos[r] = torch.tensor([s.index(ids[0]), s.index(ids[1]), s.index(ids[2])])
    with torch.no_grad():
        logits = module(x, mask, pos).double()
    assert torch.isfinite(logits).all()
    assert 0.3 < float(logits.std()) < 3.0, float(logits.std())
    assert abs(float(logits.mean())) < 1.5 * float(logits.std())  # content, not a position offset, dominates


@pytest.mark.parametrize("seed", [0, 1])
def test_reward_model_scores_finite_and_spread(tmp_path, seed, one_torch_thread):
    d = mc.make_reward_model_checkpoint(tmp_path / "rm", "tiny", seed=seed)
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(d)).eval()
    sources = [s for s, cands in mc.CALIBRATION_EXAMPLES for _ in cands]
    cands = [c for _, cs in mc.CALIBRATION_EXAMPLES for c in cs]
    with torch.no_grad():
        scores = model(**tok(sources, cands, padding=True, return_tensors="pt")).logits[:, 0].double()
    assert torch.isfinite(scores).all()
    assert 0.3 < float(scores.std()) < 3.0, float(scores.std())


# -- the tokenizer without transformers -------------------------------------------------------------------


def _texts():
    texts = []
    for rec in load_shared_records(60):
        texts.append(rec["instruction"])
        texts.extend(c["text"] for c in rec["candidates"])
    texts += ["a [SEP] b [CLS]c[MASK] <|source|>x<|candidate1|> y [UNK] [unk] <|candidate|>",
              "  lots   of\tspace \n\n x  ", "Ünïcödé, emoji 😀, ≥ → 中文", ""]
    return texts


def _variants(src: pathlib.Path, tmp: pathlib.Path):
    """The directory as written; with spm.model only (no tokenizer.json); and spm.model with a
    transformers < 4.34 tokenizer_config.json (no added_tokens_decoder: added_tokens.json rules)."""
    yield "tokenizer.json", src
    spm_only = tmp / (src.name + "-spm")
    shutil.copytree(src, spm_only)
    (spm_only / "tokenizer.json").unlink()
    yield "spm.model", spm_only
    legacy = tmp / (src.name + "-legacy")
    shutil.copytree(spm_only, legacy)
    cfg = json.loads((legacy / "tokenizer_config.json").read_text())
    cfg.pop("added_tokens_decoder")
    (legacy / "tokenizer_config.json").write_text(json.dumps(cfg))
    yield "legacy spm.model", legacy


@pytest.mark.parametrize("which", ["st", "backbone", "rm"])
def test_pair_tokenizer_ids_equal_transformers(made, which, tmp_path):
    src = {"st": made["st"], "backbone": made["st"] / "backbone", "rm": made["rm"]}[which]
    texts = _texts()
    prefixed = [SPECIAL_TOKENS[0] + t for t in texts[:150]] + [SPECIAL_TOKENS[3] + t for t in texts[150:300]]
    for name, d in _variants(src, tmp_path):
        hf = transformers.AutoTokenizer.from_pretrained(str(d))
        hf.add_tokens(list(SPECIAL_TOKENS))  # llm-blender's step
        tok, sep, pad_id, ids = pair_tokenizer_parts(d)
        assert (sep, pad_id, ids) == (hf.sep_token, hf.pad_token_id, hf.convert_tokens_to_ids(list(SPECIAL_TOKENS))), name
        assert tok.get_vocab_size() == len(hf), name
        for batch in (texts, prefixed):
            got = [e.ids for e in tok.encode_batch(batch)]
            assert got == hf(batch)["input_ids"], name
        pairs = list(zip(texts[:100], texts[100:200]))  # the reward model's [CLS] a [SEP] b [SEP]
        got = [(e.ids, e.type_ids) for e in tok.encode_batch(pairs)]
        want = hf([a for a, _ in pairs], [b for _, b in pairs])
        assert got == list(zip(want["input_ids"], want["token_type_ids"])), name


def test_converted_tokenizer_json_equals_transformers_conversion(made, tmp_path):
    """spm.model converted here gives the very tokenizer.json transformers' DebertaV2Converter gives."""
    from tokenizers import Tokenizer

    src = made["rm"]
    spm_only = tmp_path / "spm"
    shutil.copytree(src, spm_only)
    (spm_only / "tokenizer.json").unlink()
    hf = transformers.DebertaV2TokenizerFast.from_pretrained(str(spm_only))  # converts spm.model
    mine = json.loads(load_tokenizer(spm_only).tokenizer.to_str())
    assert mine == json.loads(Tokenizer.from_str(hf.backend_tokenizer.to_str()).to_str())


@pytest.mark.parametrize("padded", [False, True])
def test_spm_proto_parser_matches_sentencepiece(padded):
    spm = require("sentencepiece")
    data = mc.english_spm_model("deberta", mc.DEBERTA_V3_SPM_PIECES if padded else None)
    proc = spm.SentencePieceProcessor(model_proto=data)
    model = parse_spm_model(data)
    assert len(model.pieces) == proc.get_piece_size()
    for i in list(range(10)) + list(range(proc.get_piece_size() - 10, proc.get_piece_size())):
        piece, score, _ = model.pieces[i]
        assert (piece, score) == (proc.id_to_piece(i), proc.get_score(i)), i
    assert model.unk_id == proc.unk_id() == 3 and model.precompiled_charsmap


def test_missing_tokenizer_files_named(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no tokenizer.json .*blender-fast\[export\]"):
        load_tokenizer(tmp_path)
    (tmp_path / "spm.model").write_bytes(b"\x0a\x05junk")
    with pytest.raises(CheckpointError, match="spm.model: cannot load the tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(CheckpointError, match="T5Tokenizer.*transformers"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["deberta", "t5"])
def test_spm_canonicalization_without_protobuf_matches_protobuf(kind, tmp_path):
    """The trained model's canonical bytes (paths blanked, scores rounded), written without protobuf, are
    the bytes protobuf's deterministic serializer gives (oracle: sentencepiece_model_pb2)."""
    spm = require("sentencepiece")
    pb = require("sentencepiece.sentencepiece_model_pb2")
    from blender_fast.synthetic import tokenizer as spm_tokenizer

    text = tmp_path / "words.txt"
    text.write_text("\n".join(spm_tokenizer.word_lists().values()), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "m"), model_type="unigram",
                                   vocab_size=800, hard_vocab_limit=False, minloglevel=2, num_threads=1,
                                   **spm_tokenizer._SPM_KINDS[kind])
    raw = (tmp_path / "m.model").read_bytes()
    proto = pb.ModelProto()
    proto.ParseFromString(raw)
    proto.trainer_spec.input[:] = ["words.tsv"]
    proto.trainer_spec.model_prefix = "spm"
    for piece in proto.pieces:
        if piece.type == pb.ModelProto.SentencePiece.NORMAL:
            piece.score = round(piece.score * 4096.0) / 4096.0
    mine = spm_tokenizer._canonicalize_spm(raw)
    assert mine != raw and mine == proto.SerializeToString(deterministic=True)


def test_added_token_id_that_does_not_follow_the_vocabulary_is_named(made, tmp_path):
    d = tmp_path / "rm"
    shutil.copytree(made["rm"], d)
    (d / "tokenizer.json").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    n = str(len(parse_spm_model((d / "spm.model").read_bytes()).pieces))
    cfg["added_tokens_decoder"][str(int(n) + 7)] = cfg["added_tokens_decoder"].pop(n)  # [MASK] at a gap
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"'\[MASK\]' should have id {int(n) + 7} but gets {n}"):
        load_tokenizer(d)
