"""Engine vs reference: blender-fast's Blender against llm_blender.Blender on the same checkpoint,
prompts and machine, with interleaved repeats so that machine noise hits both sides alike."""
from __future__ import annotations

import contextlib
import gc
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from blender_fast import Blender
from blender_fast.model.checkpoint import llm_blender_model_name, load_checkpoint
from blender_fast.model.tokenization import build_pair_tokenizer
from blender_fast.runtime.autoselect import cpu_features
from blender_fast.selection.strategies import ranks_from_scores

from .common import (BatchShape, RecordingModel, RssSampler, as_jsonable, candidates_for, load_average, log,
                     median, record_reference_batches, summarize_batches)
from .flops import ModelShape, achieved, run_flops

REFERENCE_BATCH_SIZE = 8  # llm_blender.Blender.rank's default
# Pause before each timed call: ONNX Runtime's and torch's worker threads spin-wait for a while after
# a call, and on a 2-core machine that would slow whichever engine runs next.
SETTLE_S = 0.25


@dataclass
class Engine:
    """One way of running PairRM: ours (a backend and precision) or llm-blender (a batch size)."""

    name: str
    side: str  # "ours" or "reference"
    backend: str  # "onnx" | "torch" (llm-blender is torch)
    precision: str
    batch_size: int | None = None  # llm-blender only
    blender: object = None
    batches: list[BatchShape] = field(default_factory=list)  # every model call, appended by a recorder
    load_s: float = 0.0


def engine_plan(device: str) -> list[tuple[str, str, str, str]]:
    """(name, side, backend, precision) of our engines to compare on this device; the first is the main one."""
    if device == "cpu":
        bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()["isa"]))
        variants = [("onnx", "fp32"), ("onnx", "int8"), ("torch", "fp32")] + [("torch", "bf16")] * bf16
        try:
            import openvino  # noqa: F401

            variants += [("openvino", "fp32")] + [("openvino", "bf16")] * bf16
        except ImportError:
            pass
    else:
        variants = [("onnx", "fp16"), ("onnx", "fp32")] * onnxruntime_has_gpu() + [("torch", "fp16"), ("torch", "fp32")]
    return [(f"blender-fast {b} {p}", "ours", b, p) for b, p in variants]


def onnxruntime_has_gpu() -> bool:
    import onnxruntime as ort

    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


def load_ours(path, device: str, backend: str, precision: str, threads: int | None) -> tuple[object, list]:
    blender = Blender({"device": device, "use_tqdm": False})
    blender.loadranker(str(path), device=device, backend=backend, precision=precision, threads=threads)
    recorder = blender.ranker.model = RecordingModel(blender.ranker.model)
    return blender, recorder.batches


def load_reference(path, device: str) -> tuple[object, list]:
    import llm_blender

    # llm-blender prints its progress to stdout; keep stdout for nothing but our own output.
    with contextlib.redirect_stdout(sys.stderr):
        ref = llm_blender.Blender(llm_blender.BlenderConfig(device=device, use_tqdm=False))
        # llm-blender resolves model_name against the working directory, blender-fast against the checkpoint
        ref.loadranker(str(path), device=device, model_name=llm_blender_model_name(path))
    return ref, record_reference_batches(ref, device)


def reference_bubble_orders(n_prompts: int, n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The start permutations llm-blender's bubble pass will draw after torch.manual_seed(seed): one
    torch.randperm(n) per batch of `batch_size` prompts, shared by the batch's prompts."""
    import torch

    torch.manual_seed(seed)
    # Creating its DataLoader iterator draws one number (the workers' base seed) before any randperm.
    torch.empty((), dtype=torch.int64).random_()
    perms = [torch.randperm(n).numpy().astype(np.int64) for _ in range(0, n_prompts, batch_size)]
    return [perms[p // batch_size] for p in range(n_prompts)]


def timed_call(engine: Engine, fn, device: str, shape: ModelShape) -> tuple[object, dict]:
    """Run fn once; wall time, peak RSS, batch statistics and FLOPs of exactly this call."""
    gc.collect()
    time.sleep(SETTLE_S)
    first_batch, torch = len(engine.batches), None
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    with RssSampler() as mem:
        t0 = time.perf_counter()
        out = fn()
        if torch:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    batches = engine.batches[first_batch:]
    rec = {"wall_s": wall, "load_average_1min": load_average()[0], "rss_before_mb": mem.before / 2**20,
           "peak_rss_mb": mem.peak / 2**20, "rss_increase_mb": (mem.peak - mem.before) / 2**20,
           "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch else None,
           **summarize_batches(batches), **run_flops(shape, batches), "precision": engine.precision}
    if engine.side == "ours":
        st = engine.blender.ranker.last_stats
        # last_stats is the engine's own account; the recorder's model_s includes nothing else.
        rec.update(pairs=st.pairs, steps=st.steps, tokenize_s=st.tokenize_s, pack_s=st.pack_s,
                   engine_model_s=st.model_s, engine_pad_fraction=st.pad_fraction)
    else:
        rec["pairs"] = rec["rows"]
    return out, rec


def score_agreement(a, b) -> dict:
    """How two engines' full rankings agree: identical rank vectors, same top-1, max |score diff|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    same = [np.array_equal(ranks_from_scores(x), ranks_from_scores(y)) for x, y in zip(a, b)]
    return {"identical_ranks_pct": 100.0 * float(np.mean(same)),
            "top1_agreement_pct": 100.0 * float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))),
            "max_abs_score_diff": float(np.max(np.abs(a - b))), "prompts": int(a.shape[0])}


def pick_agreement(a: list[int], b: list[int]) -> float:
    return 100.0 * float(np.mean(np.asarray(a) == np.asarray(b)))


def summarize(runs: list[dict]) -> dict:
    """Median over repeats of one (task, engine) cell."""
    walls, first = [r["wall_s"] for r in runs], runs[0]
    wall = median(walls)
    out = {"repeats": len(runs), "wall_s": wall, "wall_min_s": min(walls), "wall_max_s": max(walls),
           **{k: first[k] for k in ("pairs", "tokens", "padded_tokens", "batches", "pad_fraction", "real_flops",
                                    "padded_flops", "precision")},
           "pairs_per_s": first["pairs"] / wall, "tokens_per_s": first["tokens"] / wall,
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "rss_increase_mb": max(r["rss_increase_mb"] for r in runs),
           "cuda_peak_mb": max((r["cuda_peak_mb"] or 0) for r in runs) or None,
           "model_s": median([r["model_s"] for r in runs])}
    if "tokenize_s" in first:
        out.update(tokenize_s=median([r["tokenize_s"] for r in runs]), pack_s=median([r["pack_s"] for r in runs]),
                   steps=first["steps"])
        out["other_s"] = max(0.0, wall - out["tokenize_s"] - out["pack_s"] - out["model_s"])
    return out


def run_engine_section(ckpt_path, prompts, n_candidates: int, device: str, threads: int | None, repeats: int,
                       seed: int = 0, best_of_n: bool = True, plan=None, tournament: bool = True,
                       reference_batch_sizes: tuple = (REFERENCE_BATCH_SIZE, 1)) -> dict:
    """Time rank (all pairs) and best-of-n on the same prompts: ours vs llm-blender, interleaved.

    plan: (name, side, backend, precision) of our engines, default engine_plan(device); the first is
    the one timed against llm-blender in best-of-n and compared with it. reference_batch_sizes: which of
    llm-blender's batch sizes to time in rank (its default 8, and 1); leaving 8 out saves most of a run."""
    shape = ModelShape.from_checkpoint(ckpt_path)
    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(prompts, i, n_candidates) for i in range(len(prompts))]

    engines: list[Engine] = []
    for name, side, backend, precision in plan or engine_plan(device):
        log(f"engine: loading {name}")
        t0 = time.perf_counter()
        blender, batches = load_ours(ckpt_path, device, backend, precision, threads)
        engines.append(Engine(name, side, backend, precision, blender=blender, batches=batches,
                              load_s=time.perf_counter() - t0))
    log("engine: loading llm-blender (reference)")
    t0 = time.perf_counter()
    ref_blender, ref_batches = load_reference(ckpt_path, device)
    # llm-blender halves the ranker on GPUs when its config says fp16 (the default), fp32 on CPU.
    ref_prec = "fp16" if device == "cuda" and getattr(ref_blender.ranker_config, "fp16", False) else "fp32"
    ref = Engine(f"llm-blender (batch_size={REFERENCE_BATCH_SIZE})", "reference", "torch", ref_prec,
                 batch_size=REFERENCE_BATCH_SIZE, blender=ref_blender, batches=ref_batches,
                 load_s=time.perf_counter() - t0)
    ref1 = Engine("llm-blender (batch_size=1)", "reference", "torch", ref_prec, batch_size=1,
                  blender=ref_blender, batches=ref_batches)
    ours_main = engines[0]

    # What each timed task runs, per engine. Ours get llm-blender's bubble start orders so that the
    # two bubble passes make the same comparisons and their picks can be compared one to one.
    bubble_orders = reference_bubble_orders(len(prompts), n_candidates, REFERENCE_BATCH_SIZE, seed)

    def rank_fn(engine):
        batch = {"batch_size": engine.batch_size} if engine.side == "reference" else {}
        return lambda: engine.blender.rank(inputs, cands, return_scores=True, disable_tqdm=True, **batch)

    def best_fn(engine, cmp_type):
        if engine.side == "ours":
            orders = bubble_orders if cmp_type == "bubble" else None
            return lambda: engine.blender.get_best_of_n(inputs, cands, pairrm_cmp_type=cmp_type, seed=seed,
                                                        initial_orders=orders)

        def run():
            import torch

            torch.manual_seed(seed)  # fixes the randperm its bubble pass draws (see reference_bubble_orders)
            return engine.blender.get_best_of_n(inputs, cands, pairrm_cmp_type=cmp_type, batch_size=engine.batch_size)

        return run

    # One sequence of (task, engine, fn), run `repeats` times: ours and theirs alternate.
    # llm-blender at batch_size=1 is its fastest setting on a CPU (no cross-prompt padding), so it is
    # timed in every repeat too: the speed targets are stated against it as well as the default. Its
    # scores are also the ones ours must reproduce: llm-blender decides truncation per batch (longest
    # source in the batch), and with batch_size=1 that is per prompt, like ours.
    schedule = [("rank", e, rank_fn(e)) for e in [ours_main] + [e for e in (ref, ref1) if e.batch_size in
                                                                 reference_batch_sizes] + engines[1:]]
    if best_of_n:
        schedule += [("best_of_n bubble", ours_main, best_fn(ours_main, "bubble")),
                     ("best_of_n bubble", ref, best_fn(ref, "bubble"))]
        if tournament:
            schedule.append(("best_of_n tournament", ours_main, best_fn(ours_main, "tournament")))

    log("engine: warm-up (one small call per engine)")
    for e in engines + [ref1]:
        e.blender.rank(inputs[:1], [cands[0][:2]], return_scores=True, disable_tqdm=True,
                       **({"batch_size": 1} if e is ref1 else {}))

    runs: dict[tuple[str, str], list[dict]] = {}
    outputs: dict[tuple[str, str], object] = {}
    for r in range(repeats):
        for task, engine, fn in schedule:
            out, rec = timed_call(engine, fn, device, shape)
            rec["repeat"] = r
            runs.setdefault((task, engine.name), []).append(rec)
            outputs.setdefault((task, engine.name), out)
            log(f"engine: repeat {r + 1}/{repeats} {task:<21} {engine.name:<28} {rec['wall_s']:7.2f}s")

    cells: dict[str, dict] = {}
    for (task, name), rs in runs.items():
        cells.setdefault(task, {})[name] = summarize(rs)
    for task, by_engine in cells.items():
        ref_name = ref.name if ref.name in by_engine else ref1.name
        if ref_name in by_engine:
            for name, cell in by_engine.items():
                cell["speedup_vs_reference"] = by_engine[ref_name]["wall_s"] / cell["wall_s"]
                # Paired per-repeat ratios: robust to load that drifts over the run.
                if name != ref_name and len(runs[(task, name)]) == len(runs[(task, ref_name)]):
                    cell["speedup_paired_median"] = median([b["wall_s"] / a["wall_s"] for a, b in
                                                            zip(runs[(task, name)], runs[(task, ref_name)])])
                if ref1.name in by_engine:
                    cell["speedup_vs_batch_size_1"] = by_engine[ref1.name]["wall_s"] / cell["wall_s"]
        elif task.startswith("best_of_n") and ref.name in cells.get("best_of_n bubble", {}):
            for cell in by_engine.values():
                cell["speedup_vs_reference"] = cells["best_of_n bubble"][ref.name]["wall_s"] / cell["wall_s"]

    # Agreement on the full rankings.
    scores = {name: np.asarray(outputs[("rank", name)], dtype=np.float64) for (task, name) in outputs if task == "rank"}
    agreement = {f"{a.name} vs {b.name}": score_agreement(scores[a.name], scores[b.name])
                 for a, b in [(ours_main, ref1), (ours_main, ref), (ref, ref1)] + [(e, ours_main) for e in engines[1:]]
                 if a.name in scores and b.name in scores}

    picks = {}
    if best_of_n:
        def idx(task, name=ours_main.name):
            return [cands[p].index(text) for p, text in enumerate(outputs[(task, name)])]

        full_top1, bubble = list(np.argmax(scores[ours_main.name], axis=1)), idx("best_of_n bubble")
        picks = {"ours bubble vs llm-blender bubble (same start order), % same pick":
                 pick_agreement(bubble, idx("best_of_n bubble", ref.name)),
                 "ours bubble vs full-rank top-1, % same": pick_agreement(bubble, full_top1)}
        if tournament:
            tourn = idx("best_of_n tournament")
            picks.update({"ours tournament vs full-rank top-1, % same": pick_agreement(tourn, full_top1),
                          "ours tournament vs ours bubble, % same": pick_agreement(tourn, bubble)})

    return as_jsonable({
        "settings": {"prompts": len(prompts), "candidates_per_prompt": n_candidates, "repeats": repeats,
                     "device": device, "threads": threads, "reference_batch_size": REFERENCE_BATCH_SIZE,
                     "reference_precision": ref_prec, "seed": seed,
                     "interleaving": [f"{t} / {e.name}" for t, e, _ in schedule]},
        "load_s": {**{e.name: e.load_s for e in engines}, ref.name: ref.load_s},
        "tasks": cells,
        "agreement": agreement,
        "best_of_n_picks": picks,
        "scores": {name: s.tolist() for name, s in scores.items()},
        "inputs": inputs, "candidates": cands,
        "runs": {f"{task} / {name}": rs for (task, name), rs in runs.items()},
        "model_shape": shape,
    })


# -- speed vs llm-blender in length bins ------------------------------------------------------------

def tokens_per_pair(ckpt_path, prompts, n_candidates: int) -> list[float]:
    """Each prompt's mean tokens per ordered pair (source + two candidates, each clipped at the checkpoint's
    limits), from its own tokenizer: what the length bins sort on (the table reports the tokens run)."""
    ckpt = load_checkpoint(ckpt_path)
    tok = build_pair_tokenizer(ckpt)
    out = []
    for i, p in enumerate(prompts):
        src = min(len(tok.encode([tok.source_text(p.instruction)])[0]), ckpt.source_maxlength)
        cands = [min(len(ids), ckpt.candidate_maxlength)
                 for ids in tok.encode([tok.candidate_text(c) for c in candidates_for(prompts, i, n_candidates)])]
        out.append(src + 2 * float(np.mean(cands)))
    return out


def run_speed_section(ckpt_path, prompts, n_prompts: int, n_bins: int, n_candidates: int, device: str,
                      threads: int | None, repeats: int, reference_batch_sizes: tuple, peak: dict,
                      seed: int = 0, per_bin: int | None = None, on_bin=None) -> dict:
    """Full ranking, ours (ONNX Runtime fp32, exact) against llm-blender, on the first `n_prompts` prompts
    sorted into `n_bins` bins of equal count by tokens per pair (`per_bin` of each, spread over its lengths,
    when given); each bin an engine run of its own. Beside each ratio: each engine's useful FLOP rate as a
    fraction of the machine's fp32 GEMM rate `peak`. on_bin(partial result) after every bin."""
    if threads:
        import torch

        # llm-blender runs on torch's global pool: the same thread count as ours, or the ratio compares
        # thread counts (and on a shared machine 2 spinning threads per engine skew it badly).
        torch.set_num_threads(threads)
    # The GEMM rate at the engines' own thread count (ONNX Runtime's MatMul with `threads`), not numpy's
    # (all cores): a share of the machine the engines were given.
    gemm_rate = peak.get("onnxruntime_fp32") or peak["peak_flops"]
    chosen = prompts[:n_prompts]
    lengths = tokens_per_pair(ckpt_path, chosen, n_candidates)
    order = sorted(range(len(chosen)), key=lengths.__getitem__)
    plan = [("blender-fast onnx fp32", "ours", "onnx", "fp32")]
    bins = []
    for b, idx in enumerate(np.array_split(np.asarray(order), n_bins)):
        if per_bin and per_bin < len(idx):  # spread over the bin's length range, not its shortest
            idx = idx[np.unique(np.linspace(0, len(idx) - 1, per_bin).round().astype(int))]
        group = [chosen[i] for i in idx]
        log(f"speed: bin {b + 1}/{n_bins}: {len(group)} prompts, ~{np.mean([lengths[i] for i in idx]):.0f} tokens/pair")
        eng = run_engine_section(ckpt_path, group, n_candidates, device, threads, repeats, seed=seed,
                                 best_of_n=False, plan=plan, reference_batch_sizes=reference_batch_sizes)
        cells = eng["tasks"]["rank"]
        ours = cells[plan[0][0]]
        bins.append({"prompts": len(group), "prompt_ids": [p.id for p in group],
                     "tokens_per_pair": ours["tokens"] / ours["pairs"], "pairs": ours["pairs"],
                     "engines": {name: {"wall_s": c["wall_s"], "wall_min_s": c["wall_min_s"], "wall_max_s": c["wall_max_s"],
                                        "ratio": c["wall_s"] / ours["wall_s"],
                                        "fraction_of_gemm_rate": achieved(c, gemm_rate)["fraction_of_peak"]}
                                 for name, c in cells.items()},
                     "agreement": eng["agreement"],
                     "load_average": [r.get("load_average_1min") for rs in eng["runs"].values() for r in rs]})
        ratios = {name: [r["engines"][name]["ratio"] for r in bins] for name in cells if name != plan[0][0]}
        result = as_jsonable({
            "settings": {"prompts": sum(r["prompts"] for r in bins), "drawn_from": len(chosen), "bins": n_bins,
                         "candidates_per_prompt": n_candidates, "repeats": repeats, "threads": threads,
                         "reference_batch_sizes": list(reference_batch_sizes)},
            "peak": peak, "gemm_rate": gemm_rate, "bins": bins,
            "ratio_range": {name: [min(r), max(r)] for name, r in ratios.items()},
        })
        if on_bin:
            on_bin(result)
    return result
