"""The graph builder (model/onnx_builder.py) against its oracle, today's torch export (model/export.py,
model/reward.py), and the torch-free weights reader (model/weights.py) against ``torch.load``.

fp32: with the torch export's relative-position constants the built graph is bit-identical to the
export (same ops, same order); with its own constants (computed in numpy, float32) it differs by the
rounding of those constants, which these random checkpoints amplify to a few 1e-5: as much as
torch's own fp32 differs from fp64 on them. So the end-to-end check is |built - export| <= 1e-5 plus
twice that fp32 noise floor (measured per checkpoint), and the built graph must be no further from
the fp64 truth than that either. fp16 / int8: within export.EXPORT_TOLERANCE of torch fp32, as the export.
"""
from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from tests.conftest import require

torch = require("torch")
require("transformers")

from blender_fast.model import export, onnx_builder, reward  # noqa: E402
from blender_fast.model.attention import use_export_attention  # noqa: E402
from blender_fast.model.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from blender_fast.model.tokenization import build_pair_tokenizer  # noqa: E402
from blender_fast.model.weights import read_weights  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


# -- the weights reader ------------------------------------------------------------------------------

def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, 2, generator=g).half(),
        "bf16": torch.randn(7, 3, generator=g).bfloat16(),
        "transposed": torch.randn(4, 3, generator=g).t(),  # non-contiguous strides
        "slice": torch.randn(10, generator=g)[2:6],  # a storage offset
        "ints": torch.arange(5),
        "scalar": torch.tensor(1.5),
    }


def _expected(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_same(got: dict, state: dict):
    assert set(got) == set(state)
    for k, t in state.items():
        want = _expected(t)
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        assert np.array_equal(got[k], want), k


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_reader_matches_torch_load(tmp_path, fmt):
    from safetensors.torch import save_file

    state = _state()
    path = tmp_path / ("pytorch_model.bin" if fmt == "bin" else "model.safetensors")
    if fmt == "bin":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = torch.load(path, weights_only=True) if fmt == "bin" else state
    _assert_same(read_weights(path), loaded)


def test_reader_reads_a_module_state_dict(tmp_path):
    """A module's state_dict pickles as an OrderedDict carrying a _metadata attribute (set by BUILD)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)).half()
    torch.save(module.state_dict(), tmp_path / "pytorch_model.bin")
    _assert_same(read_weights(tmp_path / "pytorch_model.bin"), module.state_dict())


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_reader_reads_shards(tmp_path, fmt):
    from safetensors.torch import save_file

    state = _state()
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-{i + 1:05d}-of-00002.{'bin' if fmt == 'bin' else 'safetensors'}"
        sub = {k: state[k] for k in part}
        if fmt == "bin":
            torch.save(sub, tmp_path / shard)
        else:
            save_file({k: v.contiguous() for k, v in sub.items()}, str(tmp_path / shard))
        weight_map.update({k: shard for k in part})
    index = tmp_path / ("pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json")
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _assert_same(read_weights(index), state)


def test_reader_matches_generated_checkpoints(tiny_checkpoint, tmp_path):
    """The generator's own files, both formats, hold what torch.load / safetensors.torch read."""
    from safetensors.torch import load_file

    from blender_fast.synthetic import make_ranker_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    want = load_file(str(ckpt.weights_path))
    got = read_weights(ckpt.weights_path)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k].numpy()) for k in want)
    hf_bin = make_ranker_checkpoint(tmp_path / "hf", "tiny", layout="hf", weights_format="bin")
    want = torch.load(hf_bin / "pytorch_model.bin", weights_only=True)
    got = read_weights(hf_bin / "pytorch_model.bin")
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k].numpy()) for k in want)


def test_reader_refuses_foreign_globals(tmp_path):
    """A pickle naming anything but tensors, storages and OrderedDict is refused, naming the global
    and the file, and nothing it names is imported or called."""
    import collections

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2), "c": collections.Counter("ab")}, path)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*refusing global collections\.Counter"):
        read_weights(path)
    # a hand-made archive whose pickle calls os.system
    evil = tmp_path / "evil.bin"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(CheckpointError, match=r"evil\.bin.*refusing global os\.system"):
        read_weights(evil)


def test_reader_legacy_and_damaged_files(tmp_path):
    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy\.bin: a legacy \(non-zip\) torch pickle.*blender-fast\[export\]"):
        read_weights(legacy)
    from safetensors.torch import save_file

    good = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(100)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: cannot read weights.*truncated"):
        read_weights(cut)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.safetensors"):
        read_weights(empty)


def test_reader_is_torch_free():
    import subprocess
    import sys

    code = ("import sys; import blender_fast.model.weights, blender_fast.model.onnx_builder; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# -- configs the builder refuses ---------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"model_type": "bert"}, "model_type"),
    ({"relative_attention": False}, "relative_attention"),
    ({"pos_att_type": "c2p"}, "pos_att_type"),
    ({"share_att_key": False}, "share_att_key"),
    ({"conv_kernel_size": 3}, "conv_kernel_size"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"norm_rel_ebd": "other"}, "norm_rel_ebd"),
    ({"hidden_size": 31}, "hidden_size"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers"),
])
def test_unknown_configs_are_refused_naming_the_field(tiny_checkpoint, change, field):
    config = {**load_checkpoint(tiny_checkpoint).backbone_config, **change}
    with pytest.raises(onnx_builder.UnsupportedGraph) as e:
        onnx_builder.graph_config(config)
    assert f"'{field}'" in str(e.value) and "\n" not in str(e.value)


def test_missing_tensor_names_the_file(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    state = load_file(str(copy / "model.safetensors"))
    del state["head_layer.1.weight"]
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing tensor 'head_layer\.1\.weight'"):
        onnx_builder.build_ranker_onnx(load_checkpoint(copy), tmp_path / "out" / "model.onnx")


# -- the oracle: the torch export -------------------------------------------------------------------

def _relative_constants(module, prefix: str) -> dict:
    """attention.py's per-layer constants of a module switched to the export attention, by the builder's names."""
    out = {}
    for i, layer in enumerate(module.pretrained_model.encoder.layer):
        att = layer.attention.self
        out[f"{prefix}encoder.layer.{i}.attention.self.pos_key"] = att.export_pos_key.numpy()
        out[f"{prefix}encoder.layer.{i}.attention.self.pos_query"] = att.export_pos_query.numpy()
    return out


def _use_constants(monkeypatch, constants: dict):
    original = onnx_builder.GraphWriter.weight

    def weight(self, name, thunk, floating=True):
        return original(self, name, (lambda: constants[name]) if name in constants else thunk, floating)

    monkeypatch.setattr(onnx_builder.GraphWriter, "weight", weight)


class Case:
    """One checkpoint: its torch fp32 reference (and fp64), its torch export, the sample feeds."""

    def __init__(self, kind: str, path, tmp_path):
        self.kind, self.path, self.tmp = kind, path, tmp_path
        if kind == "pairrm":
            self.ckpt = load_checkpoint(path)
            ids, mask, pos = export.sample_batch(build_pair_tokenizer(self.ckpt), self.ckpt)
            self.feeds = {"input_ids": ids, "attention_mask": mask, "positions": pos}
            self.args = (ids, mask, pos)
            self.prefix = onnx_builder.PAIRRM_PREFIX
        else:
            self.ckpt = reward.load_pointwise_checkpoint(path)
            ids, mask, types = reward.sample_batch(reward.build_pointwise_tokenizer(self.ckpt))
            self.feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            self.args = (ids, mask)
            self.prefix = onnx_builder.REWARD_PREFIX
        module = self.torch_module()
        with torch.no_grad():
            tensors = [torch.from_numpy(a) for a in self.args]
            self.reference = module(*tensors).numpy()
            self.reference64 = module.double()(*tensors).numpy().astype(np.float64)
        del module  # not held while the export runs: the large-shaped test stays near 3 GB
        self.noise = float(np.max(np.abs(self.reference - self.reference64)))  # torch's own fp32 rounding
        self.spread = max(float(np.ptp(self.reference)), 1.0)
        self._exports = {}

    def export(self, precision: str = "fp32"):
        if precision not in self._exports:
            out = self.tmp / f"torch-{precision}"
            # the torch export (the oracle), not the pipeline's default maker (the builder under test)
            export.export_onnx(self.ckpt, out, precision, graph=export.GRAPHS[self.ckpt.kind].make)
            self._exports[precision] = export.run_exported(out / "model.onnx", self.feeds)
        return self._exports[precision]

    def build(self, precision: str = "fp32", name: str | None = None, **kw):
        out = self.tmp / (name or f"built-{precision}") / "model.onnx"
        build = onnx_builder.build_ranker_onnx if self.kind == "pairrm" else onnx_builder.build_reward_onnx
        report = build(self.ckpt, out, precision, **kw)
        assert report.path == str(out) and report.precision == precision
        return export.run_exported(out, self.feeds)

    def torch_module(self):
        if self.kind == "pairrm":
            return export.build_torch_model(self.ckpt)
        return reward.build_torch_scorer(self.ckpt)

    def export_constants(self) -> dict:
        module = self.torch_module()
        use_export_attention(module)
        return _relative_constants(module, self.prefix)


def check_fp32(case: Case, monkeypatch) -> dict:
    """The fp32 checks of the module docstring; returns the measured differences."""
    exported = case.export("fp32")
    built = case.build("fp32")
    assert built.shape == exported.shape == case.reference.shape and built.dtype == np.float32
    diff = float(np.max(np.abs(built - exported)))
    floor = 1e-5 + 2 * case.noise
    assert diff <= floor, f"|built - export| = {diff:.3g} > {floor:.3g} (fp32 noise {case.noise:.3g})"
    truth = float(np.max(np.abs(built - case.reference64)))
    assert truth <= floor, f"|built - fp64| = {truth:.3g} > {floor:.3g}"
    # the graph itself: with the export's constants, bit for bit the export's numbers
    _use_constants(monkeypatch, case.export_constants())
    same = case.build("fp32", name="built-export-constants")
    monkeypatch.undo()
    assert np.array_equal(same, exported), float(np.max(np.abs(same - exported)))
    return {"built_vs_export": diff, "built_vs_fp64": truth, "torch_fp32_vs_fp64": case.noise}


def check_variant(case: Case, precision: str) -> float:
    built = case.build(precision)
    diff = float(np.max(np.abs(built - case.reference)))
    tolerance = export.EXPORT_TOLERANCE[precision] * case.spread
    assert np.isfinite(built).all() and diff <= tolerance, f"{precision}: {diff:.3g} > {tolerance:.3g}"
    return diff


@pytest.fixture(scope="module")
def tiny_case(tiny_checkpoint, tmp_path_factory):
    return Case("pairrm", tiny_checkpoint, tmp_path_factory.mktemp("tiny-pairrm"))


@pytest.fixture(scope="module")
def tiny_reward_case(tiny_reward_model, tmp_path_factory):
    return Case("reward", tiny_reward_model, tmp_path_factory.mktemp("tiny-reward"))


def test_tiny_pairrm_fp32_matches_the_export(tiny_case, monkeypatch):
    check_fp32(tiny_case, monkeypatch)


def test_tiny_pairrm_hf_layout_bin_matches_the_export(tmp_path, monkeypatch):
    from blender_fast.synthetic import make_ranker_checkpoint

    path = make_ranker_checkpoint(tmp_path / "hf", "tiny", seed=1, layout="hf", weights_format="bin")
    check_fp32(Case("pairrm", path, tmp_path), monkeypatch)


def test_tiny_reward_fp32_matches_the_export(tiny_reward_case, monkeypatch):
    check_fp32(tiny_reward_case, monkeypatch)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tiny_pairrm_variants(tiny_case, precision, capfd, caplog):
    with caplog.at_level(logging.DEBUG):
        check_variant(tiny_case, precision)
    if precision == "int8":  # quantize_dynamic's advice and protobuf notes are captured, not printed
        out, err = capfd.readouterr()
        assert out == "" and err == ""
        assert not [r for r in caplog.records if "quantiz" in r.getMessage().lower()]


def test_tiny_reward_fp16(tiny_reward_case):
    check_variant(tiny_reward_case, "fp16")


def test_external_data_is_the_same_graph(tiny_case):
    inline = tiny_case.build("fp32", name="inline", external_data=False)
    external = tiny_case.build("fp32", name="external", external_data=True)
    assert (tiny_case.tmp / "external" / "model.onnx.data").stat().st_size > 0
    assert not (tiny_case.tmp / "inline" / "model.onnx.data").exists()
    assert np.array_equal(inline, external)
    # int8 quantizes a temporary fp32 graph (with external data here) and leaves only its own file
    quantized = tiny_case.build("int8", name="int8-external", external_data=True)
    assert np.array_equal(quantized, tiny_case.build("int8", name="int8-inline", external_data=False))
    assert sorted(p.name for p in (tiny_case.tmp / "int8-external").iterdir()) == ["model.onnx"]


def test_built_graph_has_the_exports_interface(tiny_case, tiny_reward_case):
    import onnx

    for case in (tiny_case, tiny_reward_case):
        case.export("fp32")
        case.build("fp32")

        def interface(path):
            m = onnx.load(str(path), load_external_data=False)
            dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
            return ([(v.name, v.type.tensor_type.elem_type, dims(v)) for v in m.graph.input],
                    [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in m.graph.output])

        assert interface(case.tmp / "built-fp32" / "model.onnx") == interface(case.tmp / "torch-fp32" / "model.onnx")


def test_the_runtime_session_runs_the_built_graph(tiny_case):
    from blender_fast.runtime.sessions import OnnxPairModel

    tiny_case.build("fp32")
    session = OnnxPairModel(tiny_case.tmp / "built-fp32" / "model.onnx")
    got = session(*tiny_case.args)
    assert np.array_equal(got, export.run_exported(tiny_case.tmp / "built-fp32" / "model.onnx", tiny_case.feeds))


# -- bigger shapes (slow) ----------------------------------------------------------------------------

@pytest.mark.slow
def test_xsmall_pairrm_and_reward(tmp_path, monkeypatch):
    from blender_fast.synthetic import make_ranker_checkpoint, make_reward_model_checkpoint

    pair = Case("pairrm", make_ranker_checkpoint(tmp_path / "pair", "xsmall"), tmp_path / "p")
    check_fp32(pair, monkeypatch)
    check_variant(pair, "int8")
    reward = Case("reward", make_reward_model_checkpoint(tmp_path / "OpenAssistant" / "reward-model-deberta-v3-large-v2",
                                                         "xsmall"), tmp_path / "r")
    check_fp32(reward, monkeypatch)


def make_large_shaped(tmp_path, layers: int = 2):
    """A PairRM checkpoint with every tensor shape and the attention configuration of the real one
    (hidden 1024, 16 heads, FFN 4096, 128005 embedding rows, 256 position buckets, c2p|p2c, shared keys,
    LayerNorm'd relative embeddings) but ``layers`` layers instead of 24: the tiny generated checkpoint's
    tokenizer and ranker config, its backbone config and weights replaced (HF's random init)."""
    from safetensors.torch import save_file

    from blender_fast.synthetic import PAIRRM_EMBEDDING_ROWS, make_ranker_checkpoint, ranker_backbone_config

    path = make_ranker_checkpoint(tmp_path / "large", "tiny", backbone_weights=False)
    cfg = ranker_backbone_config("large", PAIRRM_EMBEDDING_ROWS)
    cfg.num_hidden_layers = layers
    cfg.architectures = ["DebertaV2Model"]
    cfg.save_pretrained(str(path / "backbone"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = export.pairrm_module(cfg, 1)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path / "model.safetensors"))
    del module
    return path


@pytest.mark.slow
def test_large_shaped_pairrm(tmp_path, monkeypatch):
    case = Case("pairrm", make_large_shaped(tmp_path), tmp_path / "work")
    diffs = check_fp32(case, monkeypatch)
    # HF's plain init (no gain conditioning) at PairRM's width: the 1e-5 holds outright
    assert diffs["built_vs_export"] <= 1e-5, diffs
    check_variant(case, "fp16")  # (int8 here: quantize_dynamic alone lifts the process past 5 GB; see xsmall)


def test_int8_reports_its_difference_with_tolerance_and_verdict(tiny_case):
    """issue 28 item 8: the int8 build states its difference from the fp32 graph, the tolerance, pass/fail."""
    out = tiny_case.tmp / "int8-checked" / "model.onnx"
    report = onnx_builder.build_ranker_onnx(tiny_case.ckpt, out, "int8", check_feeds=tiny_case.feeds,
                                            tolerance=export.EXPORT_TOLERANCE["int8"])
    check = report.check
    fp32 = tiny_case.build("fp32", name="fp32-for-int8")
    assert check.max_abs_diff == pytest.approx(float(np.max(np.abs(export.run_exported(out, tiny_case.feeds) - fp32))))
    assert check.tolerance == pytest.approx(export.EXPORT_TOLERANCE["int8"] * max(1.0, float(np.ptp(fp32))))
    assert check.passed and check.line().endswith(": pass") and "tolerance" in check.line()
    strict = onnx_builder.build_ranker_onnx(tiny_case.ckpt, out, "int8", check_feeds=tiny_case.feeds, tolerance=0.0)
    assert check.max_abs_diff > 0 and not strict.check.passed and strict.check.line().endswith(": FAIL")
    assert onnx_builder.build_ranker_onnx(tiny_case.ckpt, out, "int8").check is None
