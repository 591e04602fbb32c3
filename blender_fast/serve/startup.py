"""``blender-fast serve``: its arguments, the listening socket, the model load, uvicorn, and the drain on
SIGTERM or Ctrl-C (SIGINT). The CLI calls add_serve_parser from build_parser; the app is app.py's."""
from __future__ import annotations

import errno
import signal
import socket
import sys
import threading
import time

from ..runtime.loading import ranker_details, startup_line
from .app import create_app, import_serving
from .connections import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS,
                          DEFAULT_MAX_HEADER_BYTES, ConnectionLimits, uvicorn_settings)
from .engine import (DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_QUEUED_PAIRS, DEFAULT_MAX_ROWS_PER_REQUEST,
                     DEFAULT_MAX_WAIT_MS, BatchingEngine)
from .fuse_batcher import DEFAULT_FUSE_MAX_BATCH, DEFAULT_FUSE_MAX_QUEUED, DEFAULT_FUSE_MAX_WAIT_MS
from .schema import (DEFAULT_MAX_CANDIDATES, DEFAULT_MAX_QUEUED_TOKENS, DEFAULT_MAX_REQUEST_CHARS,
                     DEFAULT_MAX_REQUEST_TOKENS, DEFAULT_MAX_TEXT_CHARS)

DRAIN_TIMEOUT_S = 60.0
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


def add_serve_parser(subparsers) -> None:
    """``blender-fast serve``: the CLI calls this from build_parser."""
    from ..options import STRATEGIES, HelpFormatter, add_engine_options, int_argument, number_argument
    from .rerank import DEFAULT_RERANK_STRATEGY

    positive_int = int_argument(1)
    positive_number = number_argument(0.001)

    p = subparsers.add_parser("serve", help="serve PairRM over HTTP with continuous batching (needs [serve])",
                              description="Serve PairRM over HTTP (JSON under /v1, /health, /ready, /metrics, "
                                          "/docs) with continuous batching across requests and selection steps.",
                              formatter_class=HelpFormatter)
    p.add_argument("--model", "--ranker", dest="model", required=True,
                   help="Hugging Face Hub id (llm-blender/PairRM), PairRM checkpoint directory, or demo:tiny / "
                        "demo:xsmall (random weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int_argument(0, 65535), default=8000,
                   help="0 = any free port (the startup line says which)")
    add_engine_options(p)
    p.add_argument("--fuser", default=None,
                   help="GenFuser: a Hugging Face Hub id (llm-blender/gen_fuser_3b) or a checkpoint directory; "
                        "enables POST /v1/fuse")
    p.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help="real tokens one scheduler iteration runs (all its model calls together)")
    p.add_argument("--max-wait-ms", type=number_argument(0), default=DEFAULT_MAX_WAIT_MS,
                   help="when idle, how long a new request waits for others to share its batch")
    p.add_argument("--max-queued-pairs", type=positive_int, default=DEFAULT_MAX_QUEUED_PAIRS,
                   help="model rows admitted but not yet run; beyond it requests get 429")
    p.add_argument("--max-rows-per-request", type=positive_int, default=DEFAULT_MAX_ROWS_PER_REQUEST,
                   help="most rows one request contributes to one iteration (fairness)")
    p.add_argument("--max-candidates", type=positive_int, default=DEFAULT_MAX_CANDIDATES,
                   help="candidates per item; beyond it 413")
    p.add_argument("--max-text-chars", type=positive_int, default=DEFAULT_MAX_TEXT_CHARS,
                   help="characters per text; beyond it 413")
    p.add_argument("--max-source-length", type=positive_int, default=None,
                   help="largest source_maxlength a request may ask (tokens); beyond it 422 (default: the "
                        "checkpoint's own source_maxlength)")
    p.add_argument("--max-candidate-length", type=positive_int, default=None,
                   help="largest candidate_maxlength a request may ask (tokens); beyond it 422 (default: the "
                        "checkpoint's own candidate_maxlength)")
    p.add_argument("--max-request-tokens", type=positive_int, default=DEFAULT_MAX_REQUEST_TOKENS,
                   help="tokens one request may hold, estimated as texts x their length bounds; beyond it 413")
    p.add_argument("--max-queued-tokens", type=positive_int, default=DEFAULT_MAX_QUEUED_TOKENS,
                   help="tokens all requests in flight may hold (the same estimate); beyond it 429")
    p.add_argument("--max-request-chars", type=positive_int, default=DEFAULT_MAX_REQUEST_CHARS,
                   help="characters of text one request may carry (the tokenizer reads them all); beyond it 413")
    p.add_argument("--header-timeout", type=positive_number, default=DEFAULT_HEADER_TIMEOUT_S,
                   help="seconds a client has to send a request's line and headers; then 408 and the connection "
                        "is closed")
    p.add_argument("--body-timeout", type=positive_number, default=DEFAULT_BODY_TIMEOUT_S,
                   help="seconds a request body may stall between two reads; then 408 and the connection is closed")
    p.add_argument("--max-header-bytes", type=positive_int, default=DEFAULT_MAX_HEADER_BYTES,
                   help="request line and headers, in bytes; beyond it 431")
    p.add_argument("--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections; a request on one more gets 503")
    p.add_argument("--drain-timeout", type=positive_number, default=DRAIN_TIMEOUT_S,
                   help="on SIGTERM or Ctrl-C: seconds the fully received requests have to finish")
    p.add_argument("--fuse-max-batch", type=positive_int, default=DEFAULT_FUSE_MAX_BATCH,
                   help="/v1/fuse: prompts of concurrent requests run in one generate batch")
    p.add_argument("--fuse-max-wait-ms", type=number_argument(0), default=DEFAULT_FUSE_MAX_WAIT_MS,
                   help="/v1/fuse: how long a fusion batch waits for other requests to join")
    p.add_argument("--fuse-max-queued", type=positive_int, default=DEFAULT_FUSE_MAX_QUEUED,
                   help="/v1/fuse: prompts waiting for generate; beyond it requests get 429")
    p.add_argument("--served-model-name", action="append", default=None, metavar="NAME",
                   help="a name the rerank routes' `model` field may take (repeatable; default: blender-fast and "
                        "the checkpoint's path and directory name)")
    p.add_argument("--rerank-strategy", choices=STRATEGIES, default=DEFAULT_RERANK_STRATEGY,
                   help="rerank with top_n < documents: the top-k selection strategy")
    p.add_argument("--rerank-budget", type=positive_int, default=None,
                   help="rerank: forward passes per request for swiss / knockout_rr / adaptive")
    p.add_argument("--no-cross-request-batching", action="store_true",
                   help="run one request per model call (for comparison only)")
    p.add_argument("--verbose", action="store_true",
                   help="say in full how the ranker runs and why (CPU, ISA, auto-selection's reasons)")
    p.set_defaults(func=cmd_serve)


class ListenError(RuntimeError):
    """The server cannot bind its address (one line for the CLI, naming host:port)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (port 0: the OS picks one; getsockname() says which).

    proto must be IPPROTO_TCP: asyncio turns on TCP_NODELAY only for sockets that say so, and without
    it a keep-alive client waits ~40 ms per response (Nagle against delayed ACKs, headers and body
    being two writes). TCP_NODELAY on the listening socket is inherited by accepted ones on Linux."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # port in use, address not on this machine, a privileged port ...
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                          + (" (another process holds the port; pick another --port)" if e.errno == errno.EADDRINUSE else "")) from None
    # Listen now, not when uvicorn starts: a client that connects right after the "ready" line (or while
    # the model loads) waits in the backlog instead of being refused.
    sock.listen(2048)
    return sock


def _runtime_name(model) -> str:
    session = getattr(model, "session", None)
    if session is not None:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} {session.get_providers()[0]}"
    import torch

    return f"torch {torch.__version__}"


def cmd_serve(args) -> int:
    import_serving()
    import uvicorn

    from ..synthetic.demo import resolve_model
    from ..ranker import Ranker
    from ..options import resolve_device

    for name in ("max_batch_tokens", "max_queued_pairs", "max_candidates", "max_text_chars", "max_rows_per_request"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from ..selection.budgets import BUDGETED

    if args.rerank_budget is not None and args.rerank_strategy not in BUDGETED:
        raise ValueError(f"--rerank-budget applies to the strategies {', '.join(BUDGETED)}, not "
                         f"--rerank-strategy {args.rerank_strategy}")
    sock = listening_socket(args.host, args.port)  # first: a port in use is refused before the model loads
    t0 = time.perf_counter()
    try:  # a model that fails to load (or that the engine refuses) leaves no socket open behind it
        fuser_dir = None
        if args.fuser:  # first: a wrong --fuser (not found, offline and not cached) is reported before the ranker loads
            from ..fusion.fuser import fuser_directory

            fuser_dir = fuser_directory(args.fuser)
        path = resolve_model(args.model)
        device = resolve_device(args.device, "torch" if args.backend == "torch" else "onnx")
        ranker = Ranker.from_pretrained(path, backend=args.backend, device=device, precision=args.precision,
                                        threads=args.threads, max_source_length=args.max_source_length,
                                        max_candidate_length=args.max_candidate_length)
        fuser = None
        if args.fuser:
            from ..fusion.fuser import Fuser

            from ..synthetic.demo import announce_random_weights

            announce_random_weights(fuser_dir, "fuser")
            fuser = Fuser.from_pretrained(str(fuser_dir), device=device)
        engine = BatchingEngine(ranker, max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                                max_queued_pairs=args.max_queued_pairs, max_rows_per_request=args.max_rows_per_request,
                                cross_request=not args.no_cross_request_batching)
    except KeyboardInterrupt:  # Ctrl-C while the model loads: one line, as after the start
        sock.close()
        print("blender-fast serve: SIGINT (Ctrl-C) while loading, stopped", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    except BaseException:
        sock.close()
        raise
    # The precision that runs (the one "auto" chose; the requested one otherwise).
    info = {"model": str(path), "runtime": _runtime_name(ranker.model),
            "precision": ranker.engine_info.get("precision") or args.precision,
            "threads": args.threads or "runtime default", "device": device,
            "why": ranker.engine_info.get("reason", "")}  # what "auto" chose and why (describe())
    app = create_app(engine, fuser=fuser, max_candidates=args.max_candidates, max_text_chars=args.max_text_chars,
                     info=info, ready=False, served_model_names=args.served_model_name,
                     rerank_strategy=args.rerank_strategy, rerank_budget=args.rerank_budget,
                     fuse_max_batch=args.fuse_max_batch, fuse_max_wait_ms=args.fuse_max_wait_ms,
                     fuse_max_queued=args.fuse_max_queued, max_source_length=args.max_source_length,
                     max_candidate_length=args.max_candidate_length, max_request_tokens=args.max_request_tokens,
                     max_queued_tokens=args.max_queued_tokens, max_request_chars=args.max_request_chars)
    limits = app.state.limits
    connections = ConnectionLimits(header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                                   max_header_bytes=args.max_header_bytes, max_connections=args.max_connections)
    port = sock.getsockname()[1]
    server = draining_server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                            timeout_graceful_shutdown=args.drain_timeout,
                                            **uvicorn_settings(connections)),
                             engine, app, args.drain_timeout)

    def warm_up():
        engine.warmup()
        app.state.ready = True
        print(f"blender-fast serve: ready after {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    print(f"blender-fast serve: http://{args.host}:{port} model={path} runtime={info['runtime']} "
          f"precision={info['precision']} threads={info['threads']} device={device} "
          f"max_batch_tokens={args.max_batch_tokens} max_wait_ms={args.max_wait_ms} "
          f"max_queued_pairs={args.max_queued_pairs} max_rows_per_request={args.max_rows_per_request} "
          f"max_candidates={args.max_candidates} max_text_chars={args.max_text_chars} "
          f"cross_request_batching={'off' if args.no_cross_request_batching else 'on'} fuser={args.fuser or 'none'}",
          file=sys.stderr, flush=True)
    described = ranker.describe()
    print(f"blender-fast serve: {startup_line(described)}", file=sys.stderr, flush=True)
    if args.verbose:  # the details: the CPU, its ISA and auto-selection's whole reason
        print(f"blender-fast serve: ranker: {ranker_details(described)}", file=sys.stderr, flush=True)
    print(f"blender-fast serve: limits: max_source_length={limits.max_source_length} "
          f"max_candidate_length={limits.max_candidate_length} max_request_tokens={limits.max_request_tokens} "
          f"max_queued_tokens={limits.max_queued_tokens} max_request_chars={limits.max_request_chars} "
          f"header_timeout={args.header_timeout:g}s "
          f"body_timeout={args.body_timeout:g}s max_header_bytes={args.max_header_bytes} "
          f"max_connections={args.max_connections} drain_timeout={args.drain_timeout:g}s", file=sys.stderr, flush=True)
    threading.Thread(target=warm_up, name="blender-fast-warmup", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.close(timeout=5)
        if app.state.fuse_batcher is not None:
            app.state.fuse_batcher.close()
    print("blender-fast serve: stopped", file=sys.stderr, flush=True)
    return 0


def draining_server(config, engine: BatchingEngine, app, drain_timeout_s: float = DRAIN_TIMEOUT_S):
    """A uvicorn.Server that drains on SIGTERM and on the first Ctrl-C (SIGINT): new requests get 503,
    half-sent requests and idle connections are closed at once (connections.py), the fully received
    ones finish (within drain_timeout_s); then exit 0. A second signal stops at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame):
            # Never recorded as a captured signal: uvicorn would re-raise it after shutting down, and the
            # process would die of it (SIGTERM) or print a KeyboardInterrupt traceback (SIGINT).
            name = SIGNAL_NAMES.get(sig, f"signal {sig}")
            if self.draining:
                print(f"blender-fast serve: {name} again, stopping now", file=sys.stderr, flush=True)
                self.force_exit = self.should_exit = True
                return
            self.draining = True
            app.state.draining = True
            print(f"blender-fast serve: {name}, draining", file=sys.stderr, flush=True)
            threading.Thread(target=self._drain, name="blender-fast-drain", daemon=True).start()

        def _drain(self):
            engine.drain(timeout=drain_timeout_s)
            time.sleep(0.05)  # let the last responses be written before uvicorn stops the loop
            self.should_exit = True

    return DrainingServer(config)
