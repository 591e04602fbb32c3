"""Rerank routes vs /v1/rank: throughput of the same full rankings through Cohere's /v2/rerank, TEI's
/rerank and blender-fast's own /v1/rank, closed loop at one concurrency, on one `blender-fast serve`.

The rerank routes are a JSON translation over the same engine call, so their throughput should be within
a few percent of /v1/rank (goal: within 10%). Rounds are interleaved (rank, v2, tei, rank, ...) so that a
busy machine's drift hits every route alike; the ratio is of the summed requests over the summed walls.

    python -m benchmarks.rerank --model demo:tiny --concurrency 16 --seconds 8 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import sys

from pathlib import Path

import numpy as np

from .common import candidates_for, default_data_path, load_average, load_prompts, log, run_main
from .serve import Request, ServerProcess, closed_loop, ours
from .tables import md_table

# name: (path, the request body for a query and its documents)
ROUTES = {
    "rank": ("/v1/rank", lambda q, docs: {"input": q, "candidates": docs}),
    "cohere-v2": ("/v2/rerank", lambda q, docs: {"model": "blender-fast", "query": q, "documents": docs}),
    "tei": ("/rerank", lambda q, docs: {"query": q, "texts": docs}),
    "cohere-v2-top1": ("/v2/rerank", lambda q, docs: {"model": "blender-fast", "query": q, "documents": docs,
                                                      "top_n": 1}),
}


def run(model: str, concurrency: int, seconds: float, rounds: int, candidates: int, max_chars: int,
        threads: int, seed: int) -> dict:
    prompts = load_prompts(default_data_path(), max_chars=max_chars)
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(len(prompts))) for _ in range(4096)]
    docs = [(prompts[p].instruction, candidates_for(prompts, p, candidates)) for p in picks]
    requests = {name: [Request(path, q, d, len(d) * (len(d) - 1), make(q, d)) for q, d in docs]
                for name, (path, make) in ROUTES.items()}
    server = ServerProcess(ours(model, threads), "blender-fast serve")
    totals = {name: {"requests": 0, "failed": 0, "wall_s": 0.0, "cpu_s": 0.0} for name in ROUTES}
    try:
        for r in range(rounds):
            for name in ROUTES:
                cpu0 = server.cpu_s()
                res = closed_loop(server.host, server.port, requests[name], concurrency, seconds)
                res.update(requests=res["ok"], failed=res["requests"] - res["ok"], cpu_s=server.cpu_s() - cpu0)
                for k in totals[name]:
                    totals[name][k] += res[k]
                log(f"rerank bench round {r}: {name:15s} {res['requests'] / res['wall_s']:7.1f} req/s "
                    f"({res['requests']} ok, {res['failed']} failed)")
    finally:
        server.stop()
    out = {"concurrency": concurrency, "candidates": candidates, "max_chars": max_chars, "threads": threads,
           "model": str(model), "load_average": load_average(), "routes": {}}
    base = totals["rank"]["requests"] / totals["rank"]["wall_s"]
    for name, t in totals.items():
        rps = t["requests"] / t["wall_s"]
        out["routes"][name] = {**t, "req_per_s": rps, "ratio_to_rank": rps / base,
                               "server_cpu_ms_per_request": 1000 * t["cpu_s"] / max(t["requests"], 1)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo:tiny")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="per route and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--candidates", type=int, default=8, help="documents per request")
    p.add_argument("--max-chars", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="the server's intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    res = run(args.model, args.concurrency, args.seconds, args.rounds, args.candidates, args.max_chars,
              args.threads, args.seed)
    print(f"concurrency {res['concurrency']}, {res['candidates']} documents, {res['model']}, load average "
          f"{res['load_average']}\n")
    print("\n".join(md_table(["route", "req/s", "vs /v1/rank", "server CPU ms/request"],
                             [[f"{ROUTES[name][0]} ({name})", f"{r['req_per_s']:.1f}", f"{r['ratio_to_rank']:.3f}",
                               f"{r['server_cpu_ms_per_request']:.1f}"] for name, r in res["routes"].items()])))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
