"""Serving under load: `blender-fast serve` on loopback against its own ceiling and two baselines.

Side by side, on one request mix (rank and tournament-select requests, 4-12 candidates from the shared
data): the offline engine (Ranker.rank / select in-process, all requests in one call: the ceiling); the
server with continuous batching, closed-loop at several concurrencies and an open-loop Poisson sweep;
the same server with cross-request batching off (a naive wrapper); llm-blender 0.0.2 behind a minimal
HTTP handler (one request at a time, its batch_size=8); overload: open loop at 10x the measured capacity
against a small queue bound (429s, lost requests, server RSS). Every loop is bounded in count and time;
servers are subprocesses bound to 127.0.0.1.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blender_fast import Ranker

from .common import REPO, BenchPrompt, candidates_for, load_average, log, quiet_libraries
from .engine import REFERENCE_BATCH_SIZE, load_reference
from .tables import doc_body, fmt_num, md_table

@dataclass
class ServeSizes:
    concurrencies: tuple = (1, 4, 16, 64)
    requests_per_level: int = 96  # closed loop: at most this many (and at least 2 per client) ...
    level_seconds: float = 20.0  # ... within this long
    poisson_fractions: tuple = (0.25, 0.5, 0.75, 1.0)  # of the measured capacity
    poisson_seconds: float = 6.0
    overload_factor: float = 10.0
    overload_seconds: float = 6.0
    overload_queue_pairs: int = 600
    reference_requests: int = 24
    rounds: int = 2  # closed loop: interleaved rounds per concurrency
    latency_repeats: int = 7
    max_chars: int = 400
    threads: int = 1


QUICK = ServeSizes(concurrencies=(1, 4, 16), requests_per_level=32, level_seconds=8, poisson_fractions=(0.5, 1.0),
                   poisson_seconds=3, overload_seconds=3, reference_requests=6, latency_repeats=3)


# -- requests --------------------------------------------------------------------------------------

@dataclass
class Request:
    route: str  # "rank" | "select" (/v1/ROUTE), or a path of its own ("/v2/rerank")
    input: str
    candidates: list
    rows: int  # model rows the request costs (rank: n(n-1); tournament top-1: 2(n-1))
    payload: dict | None = None  # the body as given (rerank routes); else built from input and candidates

    @property
    def path(self) -> str:
        return self.route if self.route.startswith("/") else f"/v1/{self.route}"

    def body(self) -> bytes:
        select = {"top_k": 1, "strategy": "tournament"} if self.route == "select" else {}
        return json.dumps(self.payload or {"input": self.input, "candidates": self.candidates, **select}).encode()


def build_requests(prompts: list[BenchPrompt], count: int, seed: int, max_chars: int) -> list[Request]:
    """`count` requests: a rank or a tournament select, 4-12 candidates, texts clipped to `max_chars`."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(count):
        n, route, p = int(rng.integers(4, 13)), "rank" if rng.random() < 0.5 else "select", int(rng.integers(len(prompts)))
        out.append(Request(route, prompts[p].instruction[:max_chars], [c[:max_chars] for c in candidates_for(prompts, p, n)],
                           n * (n - 1) if route == "rank" else 2 * (n - 1)))
    return out


# -- servers ---------------------------------------------------------------------------------------

class ServerProcess:
    """A server subprocess; its first stderr line with http:// gives the URL."""

    def __init__(self, argv: list[str], name: str, ready_timeout: float = 180.0):
        # The repository first; the caller's PYTHONPATH (if any) after it rather than dropped.
        path = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=str(REPO),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
        self.name, self.lines, self.url = name, [], None
        end = time.monotonic() + ready_timeout
        while self.url is None and time.monotonic() < end:
            line = self.proc.stderr.readline()
            if line:
                self.lines.append(line.rstrip())
                self.url = next((w for w in line.split() if w.startswith("http://")), None)
            elif self.proc.poll() is not None:
                break
        if self.url is None:
            self.stop()
            raise RuntimeError(f"{name} did not start: " + "\n".join(self.lines[-20:]))
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.host, port = self.url[len("http://"):].split(":")
        self.port = int(port)
        for _ in range(int(ready_timeout * 10)):
            if _get(self.host, self.port, "/ready")[0] == 200:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"{name} never became ready")

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def cpu_s(self) -> float:
        """CPU seconds of the server (all its threads): work that a shared machine's other jobs disturb far
        less than wall time."""
        import psutil

        return sum(psutil.Process(self.proc.pid).cpu_times()[:2])

    def metrics(self, labelled: str | None = None) -> dict:
        """/metrics samples without labels, or with labels those of the family named ``labelled``."""
        lines = _get(self.host, self.port, "/metrics")[1].splitlines()
        keep = (lambda line: line.startswith(labelled + "{")) if labelled else (lambda line: "{" not in line)
        return {key: float(value) for key, _, value in (line.rpartition(" ") for line in lines
                                                        if line and not line.startswith("#") and keep(line))}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def ours(ckpt, threads: int, *extra, max_queued_pairs: int = 100000) -> list[str]:
    return [sys.executable, "-m", "blender_fast.cli", "serve", "--model", str(ckpt), "--port", "0",
            "--threads", str(threads), "--max-queued-pairs", str(max_queued_pairs), *extra]


def _get(host, port, path):
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        status, body = resp.status, resp.read().decode()
        conn.close()
        return status, body
    except OSError:
        return 0, ""


# -- load generation -------------------------------------------------------------------------------

@dataclass
class Outcome:
    route: str
    status: int
    latency_s: float
    rows: int


class Connections:
    """One keep-alive connection per client thread."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.local = threading.local()

    def post(self, path: str, body: bytes) -> int:
        """The response's status; 0 for no response."""
        for _ in range(2):  # a keep-alive connection the server closed: reconnect once
            conn = getattr(self.local, "conn", None) or http.client.HTTPConnection(self.host, self.port, timeout=300)
            self.local.conn = conn
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
        return 0


def closed_loop(host, port, requests: list[Request], concurrency: int, seconds: float) -> dict:
    """`concurrency` clients, each sending its next request when the last is answered, until `requests`
    or `seconds` run out (every post is bounded too)."""
    conns, lock, todo, outcomes = Connections(host, port), threading.Lock(), iter(requests), []
    end = time.monotonic() + seconds

    def client():
        while time.monotonic() < end:
            with lock:
                r = next(todo, None)
            if r is None:
                return
            t0 = time.perf_counter()
            status = conns.post(r.path, r.body())
            with lock:
                outcomes.append(Outcome(r.route, status, time.perf_counter() - t0, r.rows))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    return summarize(outcomes, time.perf_counter() - t0)


def open_loop(host, port, requests: list[Request], rate: float, seconds: float, seed: int,
              rss=None) -> dict:
    """Poisson arrivals at `rate` requests/s for `seconds`; every sent request is waited for (bounded)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 2) + 10))
    arrivals = arrivals[arrivals < seconds]
    conns = Connections(host, port)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    rss_samples = []

    def send(r: Request):
        t0 = time.perf_counter()
        status = conns.post(r.path, r.body())
        with lock:
            outcomes.append(Outcome(r.route, status, time.perf_counter() - t0, r.rows))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=256) as pool:
        futures = []
        for k, at in enumerate(arrivals):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send, requests[k % len(requests)]))
            if rss is not None and k % 10 == 0:
                rss_samples.append(rss())
        done, not_done = concurrent.futures.wait(futures, timeout=seconds + 300)
    out = summarize(outcomes, time.perf_counter() - t0)
    out.update(offered_rate=rate, sent=len(arrivals), unanswered=len(not_done))
    if rss_samples:
        out.update(rss_mb_first=rss_samples[0], rss_mb_last=rss(), rss_mb_max=max(rss_samples))
    return out


def summarize(outcomes: list[Outcome], wall: float) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    out = {"requests": len(outcomes), "ok": len(ok), "wall_s": wall, "outcomes": outcomes,
           "statuses": {str(s): sum(1 for o in outcomes if o.status == s) for s in sorted({o.status for o in outcomes})},
           "pairs_per_s": sum(o.rows for o in ok) / wall if wall else 0.0,
           "requests_per_s": len(ok) / wall if wall else 0.0}
    for route in ("rank", "select", "all"):
        lat = np.array([o.latency_s for o in ok if route == "all" or o.route == route])
        if len(lat):
            out[f"{route}_p50_ms"], out[f"{route}_p95_ms"], out[f"{route}_p99_ms"] = (
                float(x) * 1000 for x in np.percentile(lat, [50, 95, 99]))
    return out


def batch_stats(before: dict, after: dict, token_budget: int) -> dict:
    """The server's batching between two /metrics snapshots."""
    d = {k: after.get(f"blender_fast_{k}_total", 0.0) - before.get(f"blender_fast_{k}_total", 0.0)
         for k in ("batches", "forward_passes", "tokens", "pad_tokens", "model_seconds")}
    batches, padded = d["batches"] or 1, d["tokens"] + d["pad_tokens"]
    return {"batches": int(d["batches"]), "rows_per_batch": d["forward_passes"] / batches,
            "batch_fill": padded / batches / token_budget, "pad_fraction": d["pad_tokens"] / padded if padded else 0.0,
            "model_s": d["model_seconds"]}


# -- the llm-blender baseline: a minimal HTTP handler ----------------------------------------------

def reference_server_main(argv: list[str]) -> int:
    """`python -m benchmarks.serve reference CKPT`: llm-blender behind http.server, one request at a time."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import torch

    quiet_libraries()

    torch.set_num_threads(int(argv[1]) if len(argv) > 1 else 1)
    blender, _ = load_reference(argv[0], "cpu")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send(200, {"ready": True})

        def do_POST(self):
            item = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:  # what a plain wrapper does: one request at a time, llm-blender's own batching
                ranks = blender.rank([item["input"]], [item["candidates"]], batch_size=REFERENCE_BATCH_SIZE,
                                     disable_tqdm=True)[0]
            ranks = [int(r) for r in ranks]
            self._send(200, {"ranks": ranks} if self.path.endswith("rank") else {"top_k": [int(np.argmin(ranks))]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"llm-blender reference server: http://127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


# -- the section -----------------------------------------------------------------------------------

def _offline(ranker, requests: list[Request]) -> dict:
    """The ceiling: every request's work in two calls (ranks, then tournament selects), in-process."""
    ranks, sels = ([r for r in requests if r.route == route] for route in ("rank", "select"))
    t0, cpu0 = time.perf_counter(), time.process_time()
    if ranks:
        ranker.rank([r.input for r in ranks], [r.candidates for r in ranks])
    if sels:
        ranker.select([r.input for r in sels], [r.candidates for r in sels], top_k=1, strategy="tournament")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = sum(r.rows for r in requests)
    return {"requests": len(requests), "rows": rows, "wall_s": wall, "cpu_s": cpu, "pairs_per_s": rows / wall,
            "cpu_ms_per_pair": 1000 * cpu / rows}


def _merge_runs(runs: list[dict]) -> dict:
    """One level's rounds as one run: counts and times summed, latencies pooled."""
    outcomes = [o for r in runs for o in r["outcomes"]]
    out = summarize(outcomes, sum(r["wall_s"] for r in runs))
    ok_rows = sum(o.rows for o in outcomes if o.status == 200)
    batches, cpu = sum(r["batches"] for r in runs) or 1, sum(r["cpu_s"] for r in runs)
    out.update(rounds=len(runs), cpu_s=cpu, cpu_ms_per_pair=1000 * cpu / max(ok_rows, 1), batches=batches,
               model_s=sum(r["model_s"] for r in runs),
               **{k: sum(r[k] * r["batches"] for r in runs) / batches for k in ("rows_per_batch", "batch_fill", "pad_fraction")})
    return out


def _tournament_latency(ranker, server: ServerProcess, prompts, repeats: int, max_chars: int) -> dict:
    """Best-of-12 tournament, one request at a time: offline Ranker.select vs the server, alternated."""
    inp = prompts[0].instruction[:max_chars]
    cands = [c[:max_chars] for c in candidates_for(prompts, 0, 12)]
    req = Request("select", inp, cands, 22)
    conns = Connections(server.host, server.port)

    def wall(fn):
        time.sleep(0.1)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def post():
        if conns.post(req.path, req.body()) != 200:
            raise RuntimeError("the server failed a best-of-12 tournament request")

    off, srv = zip(*((wall(lambda: ranker.select([inp], [cands], top_k=1, strategy="tournament")), wall(post))
                     for _ in range(repeats)))
    return {"offline_ms": float(np.median(off)) * 1000, "server_ms": float(np.median(srv)) * 1000,
            "ratio": float(np.median(srv) / np.median(off)), "repeats": repeats}


def run_serve_section(ckpt, prompts: list[BenchPrompt], quick: bool = False, seed: int = 0) -> dict:
    sz = QUICK if quick else ServeSizes()
    ranker = Ranker.from_pretrained(ckpt, threads=sz.threads)
    res: dict = {"settings": {**sz.__dict__, "token_budget": ranker.token_budget}, "closed_loop": [],
                 "poisson": [], "load_average_start": load_average()}
    pool_requests = build_requests(prompts, max(sz.requests_per_level, 2 * max(sz.concurrencies)) + 32, seed,
                                   sz.max_chars)

    log("serve: offline ceiling")
    ranker.rank([pool_requests[0].input], [pool_requests[0].candidates])  # warm-up
    res["offline"] = _offline(ranker, pool_requests[:sz.requests_per_level])

    servers = {}
    try:
        log("serve: starting the batching server and the no-batching server")
        servers["batching"] = ServerProcess(ours(ckpt, sz.threads), "blender-fast serve")
        res["startup_line"] = servers["batching"].lines[0]
        res["tournament_latency"] = _tournament_latency(ranker, servers["batching"], prompts, sz.latency_repeats,
                                                        sz.max_chars)
        # Interleaved rounds (batching, no batching, offline, then again), so that the load other jobs
        # put on a shared machine drifts over all three alike; rows of one level are summed over rounds.
        for c in sz.concurrencies:
            reqs = pool_requests[:max(sz.requests_per_level // sz.rounds, 2 * c)]
            kinds = ["batching"] + (["no batching"] if c == 1 or c >= 16 else [])
            runs: dict = {k: [] for k in kinds}
            offline_runs = []
            for rnd in range(sz.rounds):
                for kind in kinds:
                    if kind not in servers:
                        servers[kind] = ServerProcess(ours(ckpt, sz.threads, "--no-cross-request-batching"),
                                                      "blender-fast serve (no cross-request batching)")
                    srv = servers[kind]
                    log(f"serve: closed loop, {kind}, concurrency {c}, {len(reqs)} requests, round {rnd + 1}")
                    before, cpu0 = srv.metrics(), srv.cpu_s()
                    row = closed_loop(srv.host, srv.port, reqs, c, sz.level_seconds / sz.rounds)
                    row.update(cpu_s=srv.cpu_s() - cpu0, **batch_stats(before, srv.metrics(), ranker.token_budget))
                    runs[kind].append(row)
                # The ceiling on the same requests, in between.
                offline_runs.append(_offline(ranker, reqs))
            rows, wall, cpu = (sum(r[k] for r in offline_runs) for k in ("rows", "wall_s", "cpu_s"))
            for kind in kinds:
                row = _merge_runs(runs[kind])
                row.update(server=kind, concurrency=c, rss_mb=servers[kind].rss_mb(),
                           offline_pairs_per_s=rows / wall, offline_cpu_ms_per_pair=1000 * cpu / rows)
                res["closed_loop"].append(row)
        capacity = max(r["requests_per_s"] for r in res["closed_loop"] if r["server"] == "batching")
        srv = servers["batching"]
        for k, frac in enumerate(sz.poisson_fractions):
            log(f"serve: open loop, {frac:.2f} x capacity ({capacity * frac:.1f} requests/s)")
            before = srv.metrics()
            row = open_loop(srv.host, srv.port, pool_requests, capacity * frac, sz.poisson_seconds, seed + k)
            row.update(fraction=frac, **batch_stats(before, srv.metrics(), ranker.token_budget))
            res["poisson"].append(row)
        for s in servers.values():
            s.stop()
        servers.clear()

        log(f"serve: overload, {sz.overload_factor:.0f} x capacity against --max-queued-pairs {sz.overload_queue_pairs}")
        srv = servers["overload"] = ServerProcess(
            ours(ckpt, sz.threads, max_queued_pairs=sz.overload_queue_pairs),
            "blender-fast serve (small queue)")
        # Warm up first (the runtime's arenas grow to their working size), so that RSS during the
        # overload shows growth, if any, and not the first allocations.
        closed_loop(srv.host, srv.port, pool_requests[:32], 16, sz.level_seconds)
        before = srv.metrics()
        row = open_loop(srv.host, srv.port, pool_requests, capacity * sz.overload_factor, sz.overload_seconds, seed + 99,
                        rss=srv.rss_mb)
        # Every request sent must get exactly one response: the server's count of answered requests
        # equals the client's, and none is missing (status 0 = no response on the connection).
        row.update(server_counted=sum(srv.metrics("blender_fast_requests_total").values()),
                   lost=row["sent"] - sum(n for s, n in row["statuses"].items() if s != "0"),
                   **batch_stats(before, srv.metrics(), ranker.token_budget))
        res["overload"] = {**row, "exit_code": servers.pop("overload").stop()}

        try:
            log("serve: llm-blender behind a minimal HTTP handler")
            srv = servers["llm-blender"] = ServerProcess(
                [sys.executable, "-m", "benchmarks.serve", "reference", str(ckpt), str(sz.threads)],
                "llm-blender reference server", ready_timeout=300)
            reqs = pool_requests[:sz.reference_requests]
            for c in (1, 16):
                log(f"serve: closed loop, llm-blender, concurrency {c}, {len(reqs)} requests")
                cpu0 = srv.cpu_s()
                row = closed_loop(srv.host, srv.port, reqs, c, sz.level_seconds * 2)
                cpu = srv.cpu_s() - cpu0
                # llm-blender ranks all n(n-1) pairs for a select too: count the rows it really ran.
                done = reqs[:row["ok"]]
                row["pairs_per_s_run"] = sum(len(r.candidates) * (len(r.candidates) - 1) for r in done) / row["wall_s"]
                offline = _offline(ranker, done or reqs[:1])
                row.update(server="llm-blender 0.0.2 (http.server, batch_size=8)", concurrency=c,
                           rss_mb=srv.rss_mb(), offline_pairs_per_s=offline["pairs_per_s"],
                           offline_cpu_ms_per_pair=offline["cpu_ms_per_pair"],
                           cpu_ms_per_pair=1000 * cpu / max(sum(r.rows for r in done), 1))
                res["closed_loop"].append(row)
        except Exception as e:  # noqa: BLE001  (the baseline is optional: say why it is missing)
            res["reference_error"] = f"{type(e).__name__}: {e}"
    finally:
        for s in servers.values():
            s.stop()
    res["load_average_end"] = load_average()
    for row in res["closed_loop"] + res["poisson"] + ([res["overload"]] if "overload" in res else []):
        row.pop("outcomes", None)  # per-request records: merged above, too long for the JSON
    return res


# -- report ----------------------------------------------------------------------------------------

def _f(x, digits=1):  # the report's one number format (tables.fmt_num), one decimal by default
    return fmt_num(x, digits)


def _ms(r, route):
    return " / ".join(_f(r.get(f"{route}_{p}_ms"), 0) for p in ("p50", "p95", "p99"))


def serve_md(res: dict) -> list[str]:
    md = ["## Serving under load (`blender-fast serve`)", "", doc_body(__doc__), "",
          f"Load average at start {res.get('load_average_start')}, at end {res.get('load_average_end')} "
          "(a shared machine: other jobs ran at the same time). Server: `" + res.get("startup_line", "") + "`", "",
          "### Closed loop (each client sends its next request when the last one is answered)", ""]
    md += md_table(["server", "clients", "requests ok", "pairs/s", "offline pairs/s (same requests)", "% of offline",
                    "req/s", "rank p50 / p95 / p99 ms", "select p50 / p95 / p99 ms", "rows per batch", "batch fill",
                    "pad %", "CPU ms per pair (offline)", "server RSS MB"],
                   [[r["server"], r["concurrency"], f"{r['ok']}/{r['requests']}", _f(r["pairs_per_s"]),
                     _f(r.get("offline_pairs_per_s")),
                     _f(100 * r["pairs_per_s"] / r["offline_pairs_per_s"] if r.get("offline_pairs_per_s") else None, 0),
                     _f(r["requests_per_s"], 2), _ms(r, "rank"), _ms(r, "select"), _f(r.get("rows_per_batch")),
                     _f(r.get("batch_fill"), 2), _f(100 * r["pad_fraction"] if "pad_fraction" in r else None),
                     f"{_f(r.get('cpu_ms_per_pair'), 2)} ({_f(r.get('offline_cpu_ms_per_pair'), 2)})",
                     _f(r.get("rss_mb"), 0)] for r in res["closed_loop"]])
    if res.get("reference_error"):
        md += [f"llm-blender baseline not measured: {res['reference_error']}", ""]
    md += ["The llm-blender rows count pairs/s of the requests' own pairs (a tournament select's 2(n-1)); "
           "it ranks all n(n-1) pairs for every request.", "", "### Open loop (Poisson arrivals)", ""]
    md += md_table(["offered req/s", "x capacity", "sent", "ok", "statuses", "pairs/s", "all p50 / p95 / p99 ms",
                    "rows per batch", "pad %"],
                   [[_f(r["offered_rate"]), f"{r['fraction']:.2f}", r["sent"], r["ok"], r["statuses"],
                     _f(r["pairs_per_s"]), _ms(r, "all"), _f(r.get("rows_per_batch")), _f(100 * r["pad_fraction"])]
                    for r in res["poisson"]])
    o, st = res.get("overload"), res["settings"]
    if o:
        md += [f"### Overload: {st['overload_factor']:.0f}x capacity for {st['overload_seconds']} s, "
               f"--max-queued-pairs {st['overload_queue_pairs']}", "",
               f"Sent {o['sent']}, answered {o['requests']} ({o['statuses']}), unanswered {o['unanswered']}, lost "
               f"{o['lost']}. Server RSS {_f(o.get('rss_mb_first'), 0)} MB at the start, max "
               f"{_f(o.get('rss_mb_max'), 0)}, {_f(o.get('rss_mb_last'), 0)} at the end (after a warm-up); exit code "
               f"after SIGTERM {o.get('exit_code')}.", ""]
    t = res.get("tournament_latency")
    if t:
        md += ["### Best-of-12 tournament, one request at a time", "",
               f"Offline `Ranker.select` {t['offline_ms']:.1f} ms, through the server {t['server_ms']:.1f} ms "
               f"(median of {t['repeats']}): {t['ratio']:.2f}x.", ""]
    return md


def serve_plot(res: dict, out: Path) -> str | None:
    """Left: latency against throughput. Right: throughput as % of the offline engine measured in the
    same rounds (the machine's speed drifts between levels; the ratio does not drift with it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    styles = (("batching", "tab:blue", "o"), ("no batching", "tab:orange", "o"),
              ("llm-blender", "tab:gray", "s"))
    for server, color, marker in styles:
        rows = [r for r in res["closed_loop"] if r["server"].startswith(server)]
        if not rows:
            continue
        label = "llm-blender + http.server" if server == "llm-blender" else server
        ax.plot([r["pairs_per_s"] for r in rows], [r["all_p50_ms"] for r in rows], "-" + marker, color=color,
                label=f"{label}, closed loop p50")
        ax.plot([r["pairs_per_s"] for r in rows], [r["all_p95_ms"] for r in rows], ":" + marker, color=color,
                label=f"{label}, closed loop p95")
        for r in rows:
            ax.annotate(f"c={r['concurrency']}", (r["pairs_per_s"], r["all_p50_ms"]), fontsize=7)
        ax2.plot([r["concurrency"] for r in rows], [100 * r["pairs_per_s"] / r["offline_pairs_per_s"] for r in rows],
                 "-" + marker, color=color, label=label)
    if res["poisson"]:
        ax.plot([r["pairs_per_s"] for r in res["poisson"]], [r["all_p50_ms"] for r in res["poisson"]], "-^",
                color="tab:green", label="batching, Poisson arrivals p50")
    ax.set(xlabel="throughput, pairs/s", ylabel="latency, ms", yscale="log", title="blender-fast serve on loopback")
    ax.legend(fontsize=7)
    ax2.axhline(100, color="k", lw=0.8, ls="--")
    ax2.set(xlabel="concurrent clients", ylabel="% of the offline engine's pairs/s", xscale="log",
            title="throughput vs offline, same rounds")
    clients = sorted({r["concurrency"] for r in res["closed_loop"]})
    ax2.set_xticks(clients, [str(c) for c in clients])
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "serve.png", dpi=110)
    plt.close(fig)
    return "serve.png"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "reference":
        sys.exit(reference_server_main(sys.argv[2:]))
    print("usage: python -m benchmarks --sections serve  (this module also runs the llm-blender baseline server)",
          file=sys.stderr)
    sys.exit(2)
