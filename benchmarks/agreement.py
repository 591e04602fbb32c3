"""Agreement section: `blender-fast gate` (runtime/agreement.run_gate) on a conditioned generated checkpoint.

Why conditioned: a random-weight checkpoint's prefix states barely depend on the text, so the generator
scales the head by 140 (xsmall) to 3200 (tiny) to give the pair logits a std of 1, and that amplifies any
rounding as much: bf16 then looks hopeless, which says nothing about a trained ranker. Query and key
projections x ``qk_gain`` make attention selective, as in trained models, and the head is rescaled to
logit std 1 again (xsmall: amplification 140 -> ~12). Details in docs/performance.md.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from blender_fast import Ranker
from blender_fast.model.checkpoint import load_checkpoint
from blender_fast.model.tokenization import build_pair_tokenizer
from blender_fast.runtime.agreement import GATE_VARIANTS, describe_record, gate_thresholds, run_gate
from blender_fast.runtime.autoselect import cpu_features

from .common import as_jsonable, candidates_for, log
from .tables import md_table

QK_GAIN = 3.0


def conditioned_checkpoint(base: Path, qk_gain: float = QK_GAIN) -> Path:
    """A copy of ``base`` with query/key projections x qk_gain and the head rescaled to pair-logit std 1."""
    import torch
    from safetensors.torch import load_file, save_file

    from blender_fast.model.export import build_torch_model, sample_batch

    out = base.parent / f"{base.name}-qk{qk_gain:g}"
    done = out / "conditioned_complete"
    if done.is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    weights = out / "model.safetensors"
    state = load_file(str(weights))
    for k in state:
        if ".attention.self.query_proj." in k or ".attention.self.key_proj." in k:
            state[k] = state[k] * qk_gain
    ckpt = load_checkpoint(out)
    ids, mask, pos = sample_batch(build_pair_tokenizer(ckpt), ckpt)
    with torch.no_grad():
        std = float(build_torch_model(ckpt, state)(torch.from_numpy(ids), torch.from_numpy(mask),
                                                   torch.from_numpy(pos)).std())
    state["head_layer.4.weight"] = state["head_layer.4.weight"] / std  # the logit is linear in it
    save_file(state, str(weights), metadata={"format": "pt"})
    meta_path = out / "blender_fast.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(conditioned={"qk_gain": qk_gain, "extra_head_scale": 1.0 / std,
                             "note": "query/key projections scaled so attention is selective; see benchmarks/agreement.py"})
    meta_path.write_text(json.dumps(meta, indent=2))
    done.write_text("ok\n")
    return out


def run_agreement_section(ckpt_path: Path, prompts, n_candidates: int, threads, max_chars: int | None,
                          qk_gain: float | None = QK_GAIN, variants=None) -> dict:
    """The gate on the benchmark's prompts (conditioned first unless qk_gain is None); its records are saved
    where precision="auto" reads them."""
    t0 = time.perf_counter()
    ckpt = conditioned_checkpoint(Path(ckpt_path), qk_gain) if qk_gain else Path(ckpt_path)
    clip = (lambda s: s[:max_chars]) if max_chars else (lambda s: s)
    cands = [[clip(c) for c in candidates_for(prompts, i, n_candidates)] for i in range(len(prompts))]
    log(f"agreement: {len(prompts)} prompts x {n_candidates} candidates on {ckpt}")
    records = run_gate(load_checkpoint(ckpt), lambda b, p: Ranker.from_pretrained(ckpt, backend=b, precision=p,
                                                                               threads=threads),
                       [clip(p.instruction) for p in prompts], cands, variants=variants or GATE_VARIANTS,
                       settings={"threads": threads})
    for r in records:
        log(f"agreement: {describe_record(r)}")
    return as_jsonable({"checkpoint": str(ckpt), "qk_gain": qk_gain, "prompts": len(prompts),
                        "candidates": n_candidates, "max_chars": max_chars, "threads": threads,
                        "cpu": cpu_features(), "records": records, "seconds": time.perf_counter() - t0,
                        "gate": gate_thresholds()})


def agreement_md(sec: dict) -> list[str]:
    g, cpu = sec["gate"], sec["cpu"]
    return ["## Agreement gate (precision × runtime vs exact fp32)", "",
            f"Checkpoint: {sec['checkpoint']} (query/key gain {sec['qk_gain']}), {sec['prompts']} prompts x "
            f"{sec['candidates']} candidates, texts clipped to {sec['max_chars']} characters; CPU {cpu['cpu_model']} "
            f"({', '.join(cpu['isa'])}). Gate: top-1 >= {g['top1_pct']:g}% and mean tau >= "
            f"{g['kendall_tau_mean']:g} vs ONNX fp32.", ""] + md_table(
        ["variant", "top-1 vs fp32", "Kendall τ mean (min)", "max \\|Δlogit\\| / logit std", "gate"],
        [[r["variant"], f"{r['top1_pct']:.1f}%", f"{r['kendall_tau_mean']:.3f} ({r['kendall_tau_min']:.3f})",
          f"{r['max_rel_dlogit']:.3f}", "PASS" if r["passed"] else "fail"] for r in sec["records"]])
