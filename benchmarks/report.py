"""results.md (markdown tables), results.json (every number) and PNG plots from a results dict."""
from __future__ import annotations

import json
from pathlib import Path

from blender_fast.cluster.outputs import write_text  # the CLI's rule: links followed, devices streamed

from .coldstart import coldstart_md
from .common import as_jsonable, log
from .flops import __doc__ as FLOPS_DOC
from .quality import __doc__ as QUALITY_DOC
from .ray_scaling import ray_md
from .serve import serve_md, serve_plot
from .tables import doc_body, fmt_count, fmt_num, fmt_times, md_table


# -- sections --------------------------------------------------------------------------------------

def engine_md(eng: dict) -> list[str]:
    s = eng["settings"]
    md = ["## 1. Engine vs llm-blender", "",
          f"{s['prompts']} prompts × {s['candidates_per_prompt']} candidates, same checkpoint and machine; "
          f"{s['repeats']} interleaved repeats (order per repeat: {', '.join(s['interleaving'])}); "
          f"medians, [min–max]. llm-blender runs `Blender.rank(..., batch_size={s['reference_batch_size']}, "
          f"disable_tqdm=True)` ({s['reference_precision']}). Pairs = model rows (ordered pairs); tokens = real "
          "(unpadded) tokens. Pad fraction: ours from `last_stats`, llm-blender's from its attention masks. Peak "
          "RSS: the whole process (every engine is loaded in it), and the increase over the RSS before the run. "
          "On a busy machine torch (llm-blender, our torch backend) slows down far more than ONNX Runtime: the "
          "comparison is skewed, not just noisy; every run's load average is in results.json.", ""]
    for task, cells in eng["tasks"].items():
        md += [f"### {task}", ""] + md_table(
            ["engine", "wall s", "pairs", "pairs/s", "tokens/s", "speedup vs llm-blender",
             "paired speedup (median of per-repeat ratios)", "vs llm-blender batch_size=1", "pad %", "peak RSS MB (+run)"],
            [[name, f"{fmt_num(c['wall_s'])} [{fmt_num(c['wall_min_s'])}–{fmt_num(c['wall_max_s'])}]", c["pairs"],
              fmt_num(c["pairs_per_s"]), fmt_num(c["tokens_per_s"], 0), fmt_times(c.get("speedup_vs_reference")),
              fmt_num(c.get("speedup_paired_median")), fmt_times(c.get("speedup_vs_batch_size_1")),
              fmt_num(c["pad_fraction"], 1, pct=True),
              f"{fmt_num(c['peak_rss_mb'], 0)} (+{fmt_num(c['rss_increase_mb'], 0)})"
              + (f"; GPU {fmt_num(c['cuda_peak_mb'], 0)}" if c.get("cuda_peak_mb") else "")] for name, c in cells.items()])
    md += ["### Where our time goes (median seconds per call)", ""] + md_table(
        ["task", "engine", "wall", "tokenize", "pack", "model", "other", "model % of wall", "batches", "steps"],
        [[task, name, fmt_num(c["wall_s"]), fmt_num(c["tokenize_s"], 3), fmt_num(c["pack_s"], 3), fmt_num(c["model_s"]),
          fmt_num(c["other_s"], 3), fmt_num(c["model_s"] / c["wall_s"] if c["wall_s"] else None, 1, pct=True),
          c["batches"], c.get("steps")]
         for task, cells in eng["tasks"].items() for name, c in cells.items() if "tokenize_s" in c])
    md += ["### Agreement", ""] + md_table(
        ["pair of engines", "identical ranks %", "same top-1 %", "max |score diff|"],
        [[k, fmt_num(v["identical_ranks_pct"], 1), fmt_num(v["top1_agreement_pct"], 1), f"{v['max_abs_score_diff']:.2e}"]
         for k, v in eng["agreement"].items()])
    md += ["llm-blender truncates candidates by the longest source *in its batch*; blender-fast per prompt. "
           "With batch_size=1 the two rules coincide, so that run is the parity reference; any difference "
           "between llm-blender's batch_size=8 and batch_size=1 runs is that truncation rule at work "
           "(none when no candidate reaches its limit).", ""]
    if eng.get("best_of_n_picks"):
        md += md_table(["best-of-n check", "%"], [[k, fmt_num(v, 1)] for k, v in eng["best_of_n_picks"].items()])
    return md


def speed_md(sp: dict) -> list[str]:
    """The README's table: ours against llm-blender per length bin, each engine's share of the GEMM rate."""
    s, peak = sp["settings"], sp["peak"]
    md = ["## Speed vs llm-blender, by prompt length", "",
          f"{s['prompts']} prompts × {s['candidates_per_prompt']} candidates, full ranking: the first "
          f"{s.get('drawn_from', s['prompts'])} prompts of the data sorted into {s['bins']} bins of equal count by "
          f"tokens per pair, {len(sp['bins'])} timed; each bin its own run, engines interleaved, {s['repeats']} repeat(s), "
          f"medians. Ratio = llm-blender's wall time / ours (ONNX Runtime fp32, exact). GEMM % = useful FLOPs "
          f"(real tokens) per wall second against the machine's fp32 GEMM rate at the engines' thread count "
          f"(ONNX Runtime MatMul {peak['matrix_size']}², {s['threads'] or 'default'} thread(s)): "
          f"{fmt_num(sp.get('gemm_rate', peak['peak_flops']) / 1e9, 0)} GFLOP/s, measured at the start of the run.", ""]
    names = list(sp["bins"][0]["engines"]) if sp["bins"] else []
    gemm = lambda e: fmt_num(e["fraction_of_gemm_rate"], 0, pct=True)  # noqa: E731
    md += md_table(["tokens/pair", "prompts", "ours s", "ours GEMM %"] + [h for n in names[1:] for h in (f"{n} s", "ratio", "GEMM %")],
                   [[fmt_num(b["tokens_per_pair"], 0), b["prompts"], fmt_num(b["engines"][names[0]]["wall_s"], 1),
                     gemm(b["engines"][names[0]])] + [x for n in names[1:] for x in (
                         fmt_num(b["engines"][n]["wall_s"], 1), fmt_times(b["engines"][n]["ratio"]), gemm(b["engines"][n]))]
                    for b in sp["bins"]])
    return md + ["Ratio ranges: " + "; ".join(f"{name}: {lo:.2f}× to {hi:.2f}×" for name, (lo, hi) in sp["ratio_range"].items()),
                 ""]


def strategies_md(st: dict) -> list[str]:
    s = st["settings"]
    md = ["## 2. Selection strategies", "",
          "Counts per prompt (top-k, both orders: every comparison runs (a,b) and (b,a)), from the "
          "selection code itself; exact for top-1, means over 64 random prompts for top-3.", ""]
    c12 = [r for r in st["counts"] if r["n"] == 12 and r["top_k"] == 1]
    if c12:
        md += ["### Best of 12", ""]
        md += md_table(["strategy", "forward passes", "sequential steps", "comparisons"],
                     [[r["strategy"], fmt_num(r["forward_passes"], 0), fmt_num(r["steps"], 0), fmt_num(r["comparisons"], 0)]
                      for r in c12])
    md += ["### Forward passes / sequential steps per prompt", ""]
    counts = {(r["n"], r["top_k"], r["strategy"]): r for r in st["counts"]}
    for k in sorted({r["top_k"] for r in st["counts"]}):
        d = 0 if k == 1 else 1
        md += md_table(["strategy"] + [f"n={n}" for n in s["ns"]],
                       [[f"{strategy} (top-{k})"] + [f"{fmt_num(r['forward_passes'], d)} / {fmt_num(r['steps'], d)}" if r else "—"
                                                     for r in (counts.get((n, k, strategy)) for n in s["ns"])]
                        for strategy in ("full", "bubble", "tournament")])
    if st["timed"]:
        md += ["### Wall time", "",
               f"Top-1, our engine ({st['timed'][0]['engine']}). Throughput: {s['throughput_prompts']} prompts in "
               f"flight, each step of all prompts is one packed call. Latency: {s['latency_prompts']} prompts one "
               f"at a time, median per-prompt wall time. Cells over {s['max_rows_per_cell']} model rows are "
               "skipped (counts above still hold). One run per cell.", ""]
        md += md_table(["n", "mode", "strategy", "prompts", "forward passes", "steps (max)", "wall s",
                        "s per prompt (latency: median)", "note"],
                       [[c["n"], c["mode"], c["strategy"], c["prompts"]] + (
                           [c["rows_needed"], "—", "—", "—", "skipped: " + c["skipped"]] if "skipped" in c else
                           [c["forward_passes"], c["steps"], fmt_num(c["wall_s"]),
                            fmt_num(c.get("median_prompt_wall_s", c["wall_s"] / c["prompts"])),
                            f"pad {fmt_num(c['pad_fraction'], 1, pct=True)}%"]) for c in st["timed"]])
    return md


def flops_md(fl: dict) -> list[str]:
    peak = fl["peak"]
    md = ["## 3. How close to the machine's limit", "", doc_body(FLOPS_DOC), "",
          f"Model: {fl['model_shape']['layers']} layers, H={fl['model_shape']['hidden']}, "
          f"I={fl['model_shape']['intermediate']}, 2k={fl['model_shape']['att_span']}.", ""]
    if fl.get("per_pair"):
        pp = fl["per_pair"]
        md += [f"One pair of {pp['tokens']:.0f} real tokens (the mean of the engine run): "
               f"{pp['gflop']:.1f} GFLOP — "
               + ", ".join(f"{k.replace('_', ' ')} {100 * v / pp['flops']:.0f}%" for k, v in pp["breakdown"].items())
               + ".", ""]
    def rates(p):
        return ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in p.items()
                         if isinstance(v, float) and k not in ("peak_flops", "peak_fp16_flops"))

    when = (f"at the start of the run: {rates(peak['at_start_of_run'])}; at the end: {rates(peak['at_end_of_run'])}"
            if "at_start_of_run" in peak else rates(peak))
    md += [f"GEMM peak measured in this run ({peak['matrix_size']}² fp32 matmul through ONNX Runtime with our engine's thread count, and through numpy), "
           f"{when}; peak used = the highest, {peak['peak_source']} = {peak['peak_flops'] / 1e9:.1f} GFLOP/s.", ""]
    if not fl["runs"]:
        return md + ["No timed runs in this invocation: run the engine or strategies section too.", ""]
    md += md_table(["run", "real GFLOP", "padded GFLOP", "wall s", "real GFLOP/s (wall)", "% of peak",
                    "padded GFLOP/s in model", "% of peak"],
                   [[r["run"], fmt_count(r["real_flops"] / 1e9), fmt_count(r["padded_flops"] / 1e9), fmt_num(r["wall_s"]),
                     fmt_num(r["real_flops_per_s"] / 1e9, 1), fmt_num(r["fraction_of_peak"], 1, pct=True),
                     fmt_num(r["padded_flops_per_s_in_model"] / 1e9, 1),
                     fmt_num(r["padded_model_fraction_of_peak"], 1, pct=True)] for r in fl["runs"]])
    md += ["Real FLOPs include the relative-position projections once per batch, so an engine that runs "
           "more, smaller batches (llm-blender: one per pair position and batch of prompts) does more real "
           "work for the same pairs. "
           "\"real GFLOP/s (wall)\" is useful work per second of the whole call; \"padded GFLOP/s in model\" "
           "is what the hardware executed while inside the model (ours: the ONNX/torch call; llm-blender: "
           "its backbone forward). int8 runs count the same operations and are compared with the fp32 "
           "peak, so they can exceed it.", ""]
    return md


def quality_md(q: dict) -> list[str]:
    md = ["## 4. Selection quality", ""]
    syn = q.get("synthetic")
    if syn and "levels" in syn:
        md += [doc_body(QUALITY_DOC), "",
               f"{syn['prompts']} prompts × {syn['candidates']} candidates, {syn['seeds']} noise seeds (means), "
               f"b = {syn['bias']}, σ = {syn['sigma']}. {syn['distinct_pairs_pct']:.1f}% of candidate pairs have "
               "different clipped utilities. Regret = best judge_pref − judge_pref of the pick, mean over prompts "
               "(judge_pref − 1 is a win rate against the reference, so 0.01 = 1 win-rate point); for top-3 it is "
               f"the regret of the best of the chosen three. A random pick's regret is {syn['random_pick_regret']:.4f}. "
               "PairRM's published pairwise agreements are 59–85%.", ""]
        levels = syn["levels"]
        head = [f"{lvl['target_agreement_pct']}% (β={lvl['beta_mean']:.3f})" for lvl in levels]
        for k, what in ((1, "same top-1 as full %"), (3, "overlap with full's top-3 %")):
            key = "top1_agreement_with_full_pct" if k == 1 else "overlap_with_full_pct"
            md += [f"### Top-{k}: {what} / regret, by the comparator's pairwise agreement", ""]
            by_level = [{r["variant"]: r for r in lvl["rows"] if r["top_k"] == k} for lvl in levels]
            md += md_table(["strategy", "forward passes", "steps"] + head,
                           [[v, fmt_num(r0["forward_passes"], 1), fmt_num(r0["steps"], 1)]
                            + [f"{fmt_num(lv[v][key], 1)} / {fmt_num(lv[v]['regret'], 4)}" for lv in by_level]
                            for v, r0 in by_level[0].items()])
    model = q.get("checkpoint")
    if model and "rows" in model:
        md += [f"### With the checkpoint's own logits ({model['prompts']} prompts)", "",
               f"Pairwise agreement with the judge: {model['achieved_agreement_pct']:.1f}%. A generated "
               "(random-weight) checkpoint scores about 50%: only a real PairRM makes this table meaningful.", ""]
        md += md_table(["strategy", "k", "forward passes", "steps", "same top-1 as full %", "top-3 overlap %",
                        "regret", "judge's best in set %"],
                       [[r["variant"], r["top_k"], fmt_num(r["forward_passes"], 1), fmt_num(r["steps"], 1),
                         fmt_num(r["top1_agreement_with_full_pct"], 1), fmt_num(r.get("overlap_with_full_pct"), 1),
                         fmt_num(r["regret"], 4), fmt_num(r["judge_best_in_set_pct"], 1)] for r in model["rows"]])
    return md


def _frontier_table(rows: list[dict]) -> list[str]:
    return md_table(["strategy @ budget", "forward passes (mean)", "(max)", "steps (mean)", "(max)", "regret",
                     "± over seeds", "same top-1 as full %"],
                    [[r["strategy"] if r["budget"] is None else f"{r['strategy']} @ {r['budget']}",
                      fmt_num(r["forward_passes"], 1), r["forward_passes_max"], fmt_num(r["steps"], 1), r["steps_max"],
                      fmt_num(r["regret"], 4), fmt_num(r["regret_std_over_seeds"], 4),
                      fmt_num(r["top1_agreement_with_full_pct"], 1)] for r in rows])


def frontier_md(fr: dict) -> list[str]:
    md = ["## 5. Selection at a budget: the frontier", ""]
    syn = fr.get("synthetic")
    if syn and "levels" in syn:
        md += ["Best of n with the budgeted strategies (swiss, knockout_rr, adaptive) at budgets from a knockout's "
               "forward passes to full ranking's, against full, tournament and bubble, with the synthetic comparator "
               f"of section 4 (same calibration and noise seeds): {syn['prompts']} prompts × {syn['candidates']} "
               f"candidates, {syn['seeds']} seeds (means; the max columns are over prompts and seeds). A budget is in "
               "forward passes per prompt, both orders (2 per comparison); a strategy never exceeds it. Random pick: "
               f"regret {syn['random_pick_regret']:.4f}.", ""]
        if syn.get("targets"):
            md += ["### Targets", ""]
            md += md_table(["agreement", "target", "full's regret", "best within it", "its regret", "steps (max)", "met"],
                         [[f"{t['agreement_pct']}%", f"regret ≤ full + {t['slack']} at ≤ {t['passes']} passes"
                           + (f", ≤ {t['steps']} steps" if t["steps"] else ""), fmt_num(t["full_regret"], 4),
                           f"{t['best_strategy']} @ {t['best_budget']}" if t["best_strategy"] else "—",
                           fmt_num(t["best_regret"], 4), t["best_steps_max"], "yes" if t["met"] else "no"]
                          for t in syn["targets"]])
        for lvl in syn["levels"]:
            md += [f"### {lvl['target_agreement_pct']}% pairwise agreement (β = {lvl['beta_mean']:.3f})", ""]
            md += _frontier_table(lvl["rows"])
    model = fr.get("checkpoint")
    if model and "rows" in model:
        md += [f"### With the checkpoint's own logits ({model['prompts']} prompts, agreement "
               f"{model['achieved_agreement_pct']:.1f}%)", ""]
        md += _frontier_table(model["rows"])
    return md


# -- plots -----------------------------------------------------------------------------------------

def make_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    eng = results.get("engine")
    if eng and "tasks" in eng:
        # Panel 1: full ranking; panel 2: every best-of-n task (ours bubble and tournament, theirs bubble).
        panels = [("rank", [("rank", n) for n in eng["tasks"].get("rank", {})]),
                  ("best of n", [(t, n) for t in eng["tasks"] if t.startswith("best_of_n") for n in eng["tasks"][t]])]
        panels = [p for p in panels if p[1]]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels):
            cells = [eng["tasks"][t][n] for t, n in keys]
            labels = [n if title == "rank" else f"{n}, {t.split()[-1]}" for t, n in keys]
            err = [[c["wall_s"] - c["wall_min_s"] for c in cells], [c["wall_max_s"] - c["wall_s"] for c in cells]]
            colors = ["tab:gray" if n.startswith("llm-blender") else "tab:blue" for _, n in keys]
            ax.barh(labels, [c["wall_s"] for c in cells], xerr=err, color=colors)
            ax.set(xlabel="wall time, s (median, min–max)", title=title)
            ax.invert_yaxis()
        save(fig, "engine.png")

    st = results.get("strategies")
    if st and st.get("counts"):
        ns = st["settings"]["ns"]
        fig, axes = plt.subplots(1, 3 if st["timed"] else 2, figsize=(15 if st["timed"] else 10, 4))
        for strategy, marker, color in (("full", "o", "tab:blue"), ("bubble", "s", "tab:orange"),
                                        ("tournament", "^", "tab:green")):
            rows = [r for r in st["counts"] if r["top_k"] == 1 and r["strategy"] == strategy]
            for ax, key in zip(axes, ("forward_passes", "steps")):
                ax.plot([r["n"] for r in rows], [r[key] for r in rows], marker=marker, color=color, label=strategy)
            for mode, style in (("throughput", "-"), ("latency", "--")) if st["timed"] else ():
                t = [c for c in st["timed"] if c["strategy"] == strategy and c["mode"] == mode and "wall_s" in c]
                axes[2].plot([c["n"] for c in t], [c.get("median_prompt_wall_s") or c["wall_s"] / c["prompts"] for c in t],
                             style, marker=marker, color=color, label=f"{strategy}, {mode}")
        axes[0].set(xlabel="candidates n", ylabel="forward passes per prompt (top-1)", yscale="log", xticks=ns)
        axes[1].set(xlabel="candidates n", ylabel="sequential steps (top-1)", xticks=ns)
        if st["timed"]:
            axes[2].set(xlabel="candidates n", ylabel="s per prompt (latency: median)", yscale="log",
                        xticks=st["settings"].get("timed_ns") or ns, title="wall time, top-1")
            axes[2].legend(fontsize=7)
        axes[0].legend()
        save(fig, "strategies.png")

    q = results.get("quality", {}).get("synthetic")
    if q and "levels" in q:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        x = [lvl["achieved_agreement_pct"] for lvl in q["levels"]]
        for v in [r["variant"] for r in q["levels"][0]["rows"] if r["top_k"] == 1]:
            rows = [next(r for r in lvl["rows"] if r["variant"] == v and r["top_k"] == 1) for lvl in q["levels"]]
            for ax, key in zip(axes, ("regret", "top1_agreement_with_full_pct")):
                ax.plot(x, [r[key] for r in rows], "--" if "one order" in v else "-", marker="o", label=v)
        axes[0].axhline(q["random_pick_regret"], color="gray", lw=0.8, ls=":", label="random pick")
        axes[0].set(xlabel="comparator pairwise agreement with the judge, %", ylabel="mean regret (judge_pref)",
                    yscale="log", title="top-1 regret")
        axes[1].set(xlabel="comparator pairwise agreement with the judge, %", ylabel="%",
                    title="same top-1 as full ranking")
        axes[0].legend(fontsize=7)
        save(fig, "quality.png")
    fr = results.get("frontier", {}).get("synthetic")
    if fr and "levels" in fr:
        # One column per agreement level: judge regret (top) and same top-1 as full (bottom) against forward
        # passes, one line per budgeted strategy; full / tournament / bubble as reference points.
        fig, axes = plt.subplots(2, len(fr["levels"]), figsize=(4.2 * len(fr["levels"]), 7), squeeze=False)
        budgeted = {"swiss": ("s", "tab:orange"), "knockout_rr": ("^", "tab:green"), "adaptive": ("o", "tab:red")}
        refs = {"full": ("*", "tab:blue"), "tournament": ("v", "tab:purple"), "bubble": ("D", "tab:brown")}
        for col, lvl in enumerate(fr["levels"]):
            for row, key in enumerate(("regret", "top1_agreement_with_full_pct")):
                ax = axes[row][col]
                for strategy, (marker, color) in budgeted.items():
                    rs = sorted((r for r in lvl["rows"] if r["strategy"] == strategy), key=lambda r: r["budget"])
                    ax.plot([r["forward_passes"] for r in rs], [r[key] for r in rs], marker=marker, color=color,
                            ms=4, label=strategy)
                for strategy, (marker, color) in refs.items():
                    r = next(r for r in lvl["rows"] if r["strategy"] == strategy)
                    ax.plot([r["forward_passes"]], [r[key]], marker=marker, color=color, ls="none", ms=8, label=strategy)
                    if strategy == "full" and key == "regret":
                        ax.axhline(r["regret"], color="tab:blue", lw=0.8, ls="--")
                        ax.set_title(f"{lvl['target_agreement_pct']}% comparator agreement")
                ax.axvline(44, color="gray", lw=0.6, ls=":")
                ax.set(xlabel="forward passes per prompt",
                       ylabel="judge regret (top-1)" if key == "regret" else "same top-1 as full, %")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        save(fig, "frontier.png")
    if results.get("serve", {}).get("closed_loop"):
        written.append(serve_plot(results["serve"], out))
    return written


PLOTS_SKIPPED = "No plots drawn: matplotlib is not installed (pip install 'blender-fast[bench]')"


# -- files -----------------------------------------------------------------------------------------

def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    try:
        results["plots"] = make_plots(results, out)
    except ImportError as e:  # matplotlib is optional (the bench extra): say so, in the log and the report
        results["plots"] = []
        results["plots_skipped"] = f"{PLOTS_SKIPPED} ({e})"
        log(f"WARNING: {results['plots_skipped']}")
    write_text(out / "results.json", json.dumps(as_jsonable(results), indent=1))
    write_text(out / "results.md", render_markdown(results))


def render_markdown(results: dict) -> str:
    meta, m = results["meta"], results["meta"]["machine"]
    md = ["# blender-fast benchmark", ""]
    if meta.get("note"):
        md += [f"**{meta['note']}**", ""]
    md += [f"Run {meta['started']}, {meta['wall_s']:.0f} s in all. Command: `{meta['command']}`", "",
           f"Machine: {m['cpu_model']}, {m['physical_cores']} physical / {m['logical_cores']} logical cores, "
           f"{m['memory_gb']} GB" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
           + f". Load average at start {m.get('load_average_at_start')}, at end {meta.get('load_average_at_end')}. "
           + "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".", "",
           f"Checkpoint: `{meta['checkpoint']}` ({meta['checkpoint_kind']}); data: `{meta['data']}`; "
           f"device {meta['settings']['device']}; threads {meta['settings']['threads'] or 'default'}.", ""]
    if m.get("isa") is not None:
        md += [f"CPU features used to choose variants: {', '.join(m['isa']) or 'none of AMX/AVX512-BF16/VNNI/AVX2'}.", ""]
    sections = {"engine": engine_md, "speed": speed_md, "strategies": strategies_md, "flops": flops_md,
                "quality": quality_md, "frontier": frontier_md, "ray": ray_md, "serve": serve_md,
                "coldstart": coldstart_md}
    for key, fn in sections.items():
        if key in results:
            md += fn(results[key])
    if results.get("plots"):
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]] + [""]
    elif results.get("plots_skipped"):
        md += ["## Plots", "", f"**{results['plots_skipped']}**", ""]
    return "\n".join(md)
