"""Ray: the same ranking job single-process vs on Ray Data with 1 and 2 actors.

Every variant runs the whole job on the same JSONL file: read, load the ranker, rank (tournament top-1),
write JSON Lines. Single-process is the CLI's loop (``jobs.rank_prompts`` per chunk, one 1-thread ranker);
Ray is ``blender_fast.cluster.ray_job.rank_files`` (reader tasks, a pool of 1-thread ranker actors, writer
tasks) on a local Ray instance started once before the timings (its start-up is reported apart). Same
chunk = batch size everywhere; variants interleaved per repeat; medians. Ray's overhead per prompt =
(Ray 1 actor − single-process) / prompts. CPU ms/prompt: single-process, the whole process's CPU time
(loading included); Ray, the actors' CPU time inside their batches, so "cores obtained" = CPU / wall
shows how much of a shared machine each variant really got. Targets: Ray 1 actor ≤ 1.10× single-process
wall time; 2 actors ≥ 1.6× the throughput of 1 actor.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from blender_fast import Ranker
from blender_fast.cluster.jobs import RankOptions, rank_prompts
from blender_fast.cluster.records import read_prompts

from .common import load_average, log, median
from .tables import doc_body, fmt_num, md_table

VARIANTS = ("single-process", "ray 1 actor", "ray 2 actors")


class _MeteredActor:
    """Mixed into RankerActor (see run_ray): logs each batch's wall and CPU seconds (the actor
    process's own), so the report can say how many cores each variant actually got."""
    log_path: str = ""

    def _log(self, **record):
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), **record}) + "\n")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._log(init_cpu_s=time.process_time())  # the worker's CPU so far: imports + model load

    def __call__(self, batch):
        t, c = time.perf_counter(), time.process_time()
        out = super().__call__(batch)
        self._log(rows=batch.num_rows, wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c)
        return out


def read_meter(log_path: Path) -> dict:
    lines = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    recs = [r for r in lines if "rows" in r]
    return {"batches": len(recs), "actors": len({r["pid"] for r in recs}), "rank_cpu_s": sum(r["cpu_s"] for r in recs),
            "actor_start_cpu_s": sum(r["init_cpu_s"] for r in lines if "init_cpu_s" in r),
            "pids": sorted({r["pid"] for r in lines}),
            "rank_wall_s_per_actor": {str(p): sum(r["wall_s"] for r in recs if r["pid"] == p)
                                      for p in sorted({r["pid"] for r in recs})}}


def process_tree_cpu() -> dict:
    """CPU seconds so far of this process and every process under it (Ray's raylet, GCS, workers)."""
    import psutil

    me, out = psutil.Process(), {}
    for p in [me] + me.children(recursive=True):
        try:
            out[p.pid] = sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return out


def run_single(ckpt, inp: Path, out: Path, strategy: str, chunk: int) -> int:
    """The single-process CLI's job, in-process (no interpreter start-up in the timing)."""
    prompts, ranker, options = read_prompts(inp), Ranker.from_pretrained(ckpt, threads=1), RankOptions(strategy=strategy)
    with open(out, "w", encoding="utf-8") as f:
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            for prompt, result in zip(part, rank_prompts(ranker, part, options, progress=False)):
                f.write(json.dumps({**prompt.record, "blender_fast": result}, ensure_ascii=False) + "\n")
    return len(prompts)


def run_ray(ckpt, inp: Path, out: Path, strategy: str, chunk: int, actors: int, meter: Path) -> int:
    """The Ray job, its actors metered (_MeteredActor mixed into RankerActor) into `meter`."""
    from blender_fast.cluster.ray_job import RankerActor, rank_files

    actor = type("MeteredRankerActor", (_MeteredActor, RankerActor), {"log_path": str(meter)})
    return rank_files(str(inp), out, ckpt, strategy=strategy, num_actors=actors, threads=1, batch_size=chunk,
                      actor_cls=actor)


def run_ray_section(ckpt, prompts, n_prompts: int = 200, n_candidates: int = 6, repeats: int = 2,
                    strategy: str = "tournament", chunk: int = 25) -> dict:
    import ray

    from blender_fast.cluster.ray_job import prepare_model

    if len(prompts) < n_prompts:
        raise ValueError(f"the ray section needs {n_prompts} prompts, the data has {len(prompts)}")
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        inp = work / "prompts.jsonl"
        inp.write_text("".join(json.dumps({"id": p.id, "instruction": p.instruction, "candidates": p.candidates[:n_candidates]},
                                          ensure_ascii=False) + "\n" for p in prompts[:n_prompts]), encoding="utf-8")
        prepare_model(ckpt)  # the export cache is warm for every variant alike
        # Ray runs its workers at nice 15 by default (RAY_worker_niceness); on a machine shared with other
        # work, that alone starves the actors against the nice-0 single-process run (measured: 2 actors
        # slower than 1). Same priority for every variant; the CLI's local instance does the same.
        os.environ.setdefault("RAY_worker_niceness", "0")
        started = not ray.is_initialized()  # a test may have started one already
        t0 = time.perf_counter()
        if started:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_init_s = time.perf_counter() - t0
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the metered actor, by value
        # CPU seconds spent ranking (single-process: the whole process's)
        walls, cpus, meters = ({v: [] for v in VARIANTS} for _ in range(3))
        loads, outputs = [], {}
        try:
            for r in range(repeats):
                order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # interleaved, alternating order
                for v in order:
                    out = work / f"out-{r}-{v.replace(' ', '_')}"
                    loads.append(load_average())
                    t, c = time.perf_counter(), time.process_time()
                    if v == "single-process":
                        out.mkdir()
                        n = run_single(ckpt, inp, out / "out.jsonl", strategy, chunk)
                        cpus[v].append(time.process_time() - c)
                    else:
                        meter = work / f"meter-{r}-{v.replace(' ', '_')}.jsonl"
                        before = process_tree_cpu()
                        n = run_ray(ckpt, inp, out, strategy, chunk, int(v.split()[1]), meter)
                        after = process_tree_cpu()
                        m = read_meter(meter)
                        # Ray's own CPU: driver, raylet, GCS, reader/writer workers (not the actors)
                        m["ray_side_cpu_s"] = sum(c - before.get(pid, 0.0) for pid, c in after.items()
                                                  if pid not in m["pids"])
                        m["job_cpu_s"] = m["ray_side_cpu_s"] + m["actor_start_cpu_s"] + m["rank_cpu_s"]
                        meters[v].append(m)
                        cpus[v].append(m["rank_cpu_s"])
                    walls[v].append(time.perf_counter() - t)
                    if n != n_prompts:
                        raise RuntimeError(f"{v}: wrote {n} rows, expected {n_prompts}")
                    outputs[v] = sorted(line for p in out.glob("*.jsonl") for line in p.read_text("utf-8").splitlines())
                    log(f"ray: repeat {r + 1}/{repeats} {v}: {walls[v][-1]:.1f} s, {cpus[v][-1]:.1f} CPU s "
                        f"(load {loads[-1]})")
        finally:
            if started:
                ray.shutdown()
        same = all(outputs[v] == outputs["single-process"] for v in VARIANTS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {v: median(w) for v, w in walls.items()}
    single, one, two = med["single-process"], med["ray 1 actor"], med["ray 2 actors"]
    return {"settings": {"prompts": n_prompts, "candidates_per_prompt": n_candidates, "strategy": strategy, "top_k": 1,
                         "chunk": chunk, "repeats": repeats, "threads_per_ranker": 1, "cpus": os.cpu_count()},
            "ray_init_s": ray_init_s, "ray_worker_niceness": os.environ.get("RAY_worker_niceness"),
            "variants": {v: {"wall_s": med[v], "walls_s": walls[v], "prompts_per_s": n_prompts / med[v],
                             "cpu_s": median(cpus[v]), "cpu_ms_per_prompt": 1000 * median(cpus[v]) / n_prompts,
                             "cores_obtained": median([c / w for c, w in zip(cpus[v], walls[v])]),
                             "actors_meter": meters[v]} for v in VARIANTS},
            "ray1_over_single": one / single, "ray_overhead_ms_per_prompt": 1000 * (one - single) / n_prompts,
            "ray2_speedup_over_ray1": one / two,
            # The whole job's CPU seconds (driver, Ray's daemons, actors' start-up and ranking): Ray's overhead
            # in CPU, which contention cannot blur.
            "ray1_job_cpu_s": median([m["job_cpu_s"] for m in meters["ray 1 actor"]]),
            "ray2_job_cpu_s": median([m["job_cpu_s"] for m in meters["ray 2 actors"]]),
            "single_job_cpu_s": median(cpus["single-process"]),
            "targets": {"ray1_over_single_max": 1.10, "ray2_speedup_min": 1.6}, "outputs_identical": same,
            "load_averages": loads}


def ray_md(res: dict) -> list[str]:
    s = res["settings"]
    rows = [[v, f"{fmt_num(c['wall_s'])} [{', '.join(fmt_num(w) for w in c['walls_s'])}]", fmt_num(c["prompts_per_s"]),
             fmt_num(c["cpu_ms_per_prompt"], 1), fmt_num(c["cores_obtained"])] for v, c in res["variants"].items()]
    t = res["targets"]
    return ["## Ray: one machine, 1 and 2 actors", "",
            f"{s['prompts']} prompts × {s['candidates_per_prompt']} candidates, {s['strategy']} top-{s['top_k']}, "
            f"chunk/batch {s['chunk']}, 1 thread per ranker, {s['repeats']} interleaved repeats (median "
            f"[each]); {s['cpus']} CPUs. `ray.init` took {fmt_num(res['ray_init_s'])} s (not in the timings). "
            f"Outputs identical across variants: {res['outputs_identical']}.", ""] + md_table(
        ["variant", "wall s", "prompts/s", "CPU ms/prompt", "cores obtained"], rows) + [
        f"Ray 1 actor / single-process: **{fmt_num(res['ray1_over_single'])}×** (target ≤ {t['ray1_over_single_max']}); "
        f"Ray's overhead {fmt_num(res['ray_overhead_ms_per_prompt'], 1)} ms per prompt. "
        f"2 actors vs 1: **{fmt_num(res['ray2_speedup_over_ray1'])}×** (target ≥ {t['ray2_speedup_min']}). "
        f"Whole-job CPU seconds (driver, Ray's daemons, actors' start-up and ranking): single-process "
        f"{fmt_num(res['single_job_cpu_s'], 1)}, Ray 1 actor {fmt_num(res['ray1_job_cpu_s'], 1)}, Ray 2 actors "
        f"{fmt_num(res['ray2_job_cpu_s'], 1)}. "
        f"1-minute load averages before each run: {[la[0] if la else None for la in res['load_averages']]}.", "",
        doc_body(__doc__), ""]
