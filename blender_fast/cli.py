"""blender-fast command line: rank, select and fuse LLM answers with PairRM; export and generate checkpoints.

Output files are written atomically (a temp file in the same directory, renamed at the end): a failed or
interrupted run never truncates an existing output, and --output may equal --input.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .cluster.outputs import OutputError, output_file
from .synthetic.demo import resolve_model
from .options import (MAX_BUDGET, MAX_SEED, MAX_TOP_K, ORDERS, POLICIES, STRATEGIES, HelpFormatter,
                      add_engine_options, int_argument)

DESCRIPTION = (
    "blender-fast: rank the answers several LLMs gave to each prompt with PairRM (all pairs, or the best k "
    "with far fewer model calls), fuse the best with a GenFuser, export a checkpoint to ONNX."
)


def cmd_make_checkpoint(args) -> int:
    from .synthetic import make_fuser_checkpoint, make_ranker_checkpoint, make_reward_model_checkpoint

    t0 = time.perf_counter()
    if args.kind == "fuser":
        path = make_fuser_checkpoint(args.dir, shape=args.shape or "tiny", seed=args.seed)
    elif args.kind == "reward-model":
        path = make_reward_model_checkpoint(args.dir, shape=args.shape or "tiny", seed=args.seed,
                                            weights_format=args.weights_format)
    else:
        path = make_ranker_checkpoint(args.dir, shape=args.shape or "tiny", seed=args.seed,
                                      layout=args.layout, weights_format=args.weights_format)
    print(f"wrote {args.kind} checkpoint to {path} in {time.perf_counter() - t0:.1f}s (random weights)")
    return 0


def cmd_export(args) -> int:
    from .model.export import export_command

    from .cluster.outputs import output_dir

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.out:  # before the checkpoint loads: a file there, or an unwritable place, is refused now
        output_dir(args.out, "export --out", may_hold_files=True)
    report = export_command(str(resolve_model(args.dir)), precision=precision, out=args.out)
    state = "cached, not re-exported" if report.cached else f"exported in {report.seconds:.1f}s"
    print(f"{report.path} ({precision}, {state}); max |ORT - torch fp32| on a sample batch = {report.max_abs_diff:.3g}")
    return 0



def cmd_gate(args) -> int:
    """Run the agreement gate (runtime/agreement.py) and write the records precision="auto" reads."""
    from .cluster.records import example_prompts_path, read_prompts
    from .model.checkpoint import load_checkpoint
    from .runtime.agreement import GATE_PROMPTS, describe_record, machine_variants, run_gate
    from .runtime.autoselect import gate_path

    variants = machine_variants() if args.variants is None else gate_variants_argument(args.variants)
    if not variants:
        print("gate: this CPU allows no faster variant than exact fp32 (auto stays exact); nothing to measure")
        return 0
    src = Path(args.input) if args.input else example_prompts_path()
    prompts = read_prompts(src, limit=args.prompts)
    if len(prompts) < args.prompts:  # before the model loads
        raise ValueError(f"{src} holds {len(prompts)} prompts; the gate takes --prompts {args.prompts} "
                         f"(default {GATE_PROMPTS}): pass more prompts, or --prompts {len(prompts)} for a weaker verdict")
    for p in prompts:
        if len(p.candidates) < 2:
            raise ValueError(f"{p.where}: {len(p.candidates)} candidate(s); the gate ranks 2 or more per prompt")
    path = resolve_model(args.model)
    from . import Ranker

    def load_ranker(backend, precision):
        return Ranker.from_pretrained(str(path), backend=backend, precision=precision, threads=args.threads)

    ckpt = load_checkpoint(path)
    records = run_gate(ckpt, load_ranker, [p.instruction + p.input for p in prompts],
                       [p.candidates[:args.candidates] for p in prompts], variants=variants,
                       settings={"threads": args.threads, "input": str(src)})
    for rec in records:
        print(f"gate: {describe_record(rec)}")
    print(f"gate: wrote {gate_path(ckpt)}; precision=\"auto\" reads it (ranker.describe() says what it chose)")
    return 0


def gate_variants_argument(text: str) -> tuple:
    """'torch:bf16,onnx:int8' -> (("torch", "bf16"), ("onnx", "int8")), each a variant auto may pick."""
    from .runtime.agreement import GATE_VARIANTS

    out = []
    for item in text.split(","):
        pair = tuple(item.strip().split(":"))
        if pair not in GATE_VARIANTS:
            raise ValueError(f"--variants: {item.strip()!r} is not one of "
                             f"{', '.join(b + ':' + p for b, p in GATE_VARIANTS)}")
        out.append(pair)
    return tuple(out)


# -- output files --------------------------------------------------------------------------------------

class Interrupted(Exception):
    """SIGINT / SIGTERM arrived: stop between model batches and keep what was written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _JsonlOut:
    """Records out as JSON Lines, one per line; ``written`` counts them. A failed write (a full disk,
    /dev/full, a pipe whose reader left) is one OutputError naming the user's path, not a traceback."""

    def __init__(self, f, given: str):
        self._f = f
        self.given = given
        self.written = 0
        self.flushed = 0  # records known to have left the buffer: what a failed write reports

    def write(self, record: dict) -> None:
        self.write_line(json.dumps(record, ensure_ascii=False))

    def write_line(self, line: str) -> None:
        try:
            self._f.write(line if line.endswith("\n") else line + "\n")
        except OSError as e:
            raise self._failed(e) from None
        self.written += 1

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise self._failed(e) from None
        self.flushed = self.written

    def _failed(self, e: OSError) -> OutputError:
        self.written = self.flushed
        if self.given == "-":  # stdout's reader left: Python's own flush at exit would fail again, loudly
            _detach_stdout()
        where = "stdout" if self.given == "-" else self.given
        return OutputError(f"{where}: cannot write the output: {e.strerror or e}")

    def _close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the write error that brought us here is already being reported
            pass


def _detach_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class AtomicJsonl(_JsonlOut):
    """A JSON Lines output written to a temp file in the real target's directory (symlinks followed: the link
    is kept) and renamed over it at the end (``os.replace``: all or nothing). On failure or interruption the
    target is untouched and what was written is kept as ``<output>.partial`` (a later ``--resume`` picks it
    up). The target was checked before any work (cluster/outputs.py)."""

    def __init__(self, target):
        self.path = target.path
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            f = open(self.tmp, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"{target.given}: cannot write there: {e.strerror}") from None
        super().__init__(f, target.given)

    def commit(self) -> None:
        self.flush()
        try:
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise self._failed(e) from None
        if self.partial.exists():  # its records are in the output now
            self.partial.unlink()

    def keep_partial(self) -> Path | None:
        """Close; keep the records written so far as <output>.partial (None when there were none)."""
        self._close()
        if not self.written:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.partial)
        return self.partial


class StreamJsonl(_JsonlOut):
    """stdout, or a path that is not a regular file (a FIFO, /dev/null, /dev/stdout): written directly,
    line by line, never replaced; there is no .partial."""

    def __init__(self, target):
        self.path = self.partial = Path(target.given)
        self._own = target.given != "-"
        super().__init__(open(target.path, "w", encoding="utf-8") if self._own else sys.stdout, target.given)

    def commit(self) -> None:
        self.flush()
        if self._own:
            self._close()

    def keep_partial(self):
        try:
            self.flush()
        except OutputError:  # a failed write is what brought us here; it is being reported
            pass
        if self._own:
            self._close()
        return None


# -- the job -------------------------------------------------------------------------------------------

def _options(args):
    from .cluster.jobs import RankOptions

    return RankOptions(strategy=args.strategy, top_k=args.top_k, orders=args.orders, policy=args.policy, seed=args.seed,
                      budget=args.budget)


def _scan_input(path, limit, options, want_keys: bool):
    """One streaming pass before any model work: validates every line (errors name file:line), counts
    prompts and model rows for the progress bar, and (for --resume) collects the prompts' identities."""
    from .cluster.jobs import expected_forward_passes
    from .cluster.records import iter_prompts, record_digest

    n_prompts = passes = 0
    keys: set[bytes] = set()
    repeats: dict[int, int] = {}  # prompt number -> occurrence, for the (rare) repeated records only
    for prompt in iter_prompts(path, limit):
        if options.top_k > len(prompt.candidates):
            raise ValueError(f"{prompt.where}: {len(prompt.candidates)} candidates, fewer than --top-k {options.top_k}")
        n_prompts += 1
        passes += expected_forward_passes(len(prompt.candidates), options)
        if want_keys:
            key, occurrence = _new_key(record_digest(prompt.record), keys)
            keys.add(key)
            if occurrence > 1:
                repeats[n_prompts - 1] = occurrence
    return n_prompts, passes, (keys, repeats)


def _key(digest: str, occurrence: int) -> bytes:
    """A prompt's identity, compact (16 bytes of its record digest, + its occurrence when > 1): --resume
    holds one per prompt, so a 1M-line job's set stays well under 100 MB."""
    head = bytes.fromhex(digest[:32])
    return head if occurrence == 1 else head + occurrence.to_bytes(4, "little")


def _new_key(digest: str, seen: set) -> tuple[bytes, int]:
    """The key of the next occurrence of this record, given the keys of the records before it."""
    occurrence = 1
    while _key(digest, occurrence) in seen:
        occurrence += 1
    return _key(digest, occurrence), occurrence


def _is_done(record, options, fused: bool) -> bool:
    result = record.get("blender_fast") if isinstance(record, dict) else None
    return (isinstance(result, dict) and result.get("strategy") == options.strategy
            and len(result.get("top_k") or ()) == options.top_k and (not fused or "fused" in record))


def _carry_over(out, sources, wanted: set, options, fused: bool) -> set:
    """--resume: copy the finished records of earlier runs (the old output, then its .partial) that
    belong to this input and these options; return their identities."""
    from .cluster.records import record_digest

    done: set[bytes] = set()
    for source in sources:
        if not source.is_file():
            continue
        seen: set[bytes] = set()
        with open(source, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that prompt is simply redone
                if not isinstance(record, dict):
                    continue
                key = _new_key(record_digest(record), seen)[0]
                seen.add(key)
                if key in wanted and key not in done and _is_done(record, options, fused):
                    out.write_line(line)
                    done.add(key)
    return done


def _run_job(args, desc: str, process_chunk, fused: bool) -> int:
    """Stream the input in chunks of --chunk prompts, run process_chunk(prompts, bar) -> records, write
    them atomically; Ctrl-C / SIGTERM stop cleanly, saying what was kept where."""
    from tqdm.auto import tqdm

    from .cluster.records import example_prompts_path, iter_prompts, record_digest

    options = _options(args)
    target = output_file(args.output)  # before any work: a directory or an unwritable place is refused now
    src = Path(args.input) if args.input else example_prompts_path()
    to_stdout = target.streaming
    if args.resume and to_stdout:
        raise ValueError("--resume needs an --output file (a regular file, not '-' or a device)")
    n_prompts, total_passes, (wanted, repeats) = _scan_input(src, args.limit, options, args.resume)
    out = StreamJsonl(target) if to_stdout else AtomicJsonl(target)
    carried = 0  # records kept from earlier runs (--resume); the rest of out.written is new
    t0 = time.perf_counter()
    load_s = 0.0
    previous_handler = _install_sigterm()
    try:
        done = _carry_over(out, [out.path, out.partial], wanted, options, fused) if args.resume else set()
        carried = out.written
        if args.resume:
            print(f"--resume: {len(done)} of {n_prompts} prompts already done, kept", file=sys.stderr)
        todo = n_prompts - len(done)
        work = None
        if todo:
            work = process_chunk.load()
        load_s = time.perf_counter() - t0  # model load (and, the first time, export) is reported apart
        t0 = time.perf_counter()
        with tqdm(total=total_passes, desc=desc, unit="pair", disable=args.quiet or not todo, smoothing=0.1) as bar:
            chunk = []
            for number, prompt in enumerate(iter_prompts(src, args.limit)):
                if done and _key(record_digest(prompt.record), repeats.get(number, 1)) in done:
                    continue
                chunk.append(prompt)
                if len(chunk) == args.chunk:
                    _write_chunk(out, chunk, process_chunk(work, chunk, bar))
                    bar.set_postfix_str(f"{out.written - carried}/{todo} prompts", refresh=False)
                    chunk = []
            if chunk:
                _write_chunk(out, chunk, process_chunk(work, chunk, bar))
            if bar.n < bar.total:  # the tournament's total is an upper bound: end the bar at what ran
                bar.total = bar.n
                bar.refresh()
        out.commit()
    except (KeyboardInterrupt, Interrupted) as e:
        kept = out.keep_partial()
        name = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
        print(f"\nblender-fast: interrupted ({name}): {_kept_message(out, kept, out.written - carried, to_stdout)}",
              file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
    except BaseException:
        kept = out.keep_partial()
        if kept is not None or (to_stdout and out.written):
            print(f"blender-fast: stopped: {_kept_message(out, kept, out.written - carried, to_stdout)}", file=sys.stderr)
        raise
    finally:
        _restore_sigterm(previous_handler)
    elapsed = time.perf_counter() - t0
    written_new = out.written - carried
    print(f"{desc}: {written_new} prompts in {elapsed:.1f}s ({written_new / max(elapsed, 1e-9):.2f} prompts/s; "
          f"model loaded in {load_s:.1f}s before)"
          f"{f', {out.written - written_new} kept from earlier runs' if args.resume else ''} -> {args.output}",
          file=sys.stderr)
    return 0


def _kept_message(out, kept, written_new, to_stdout) -> str:
    if to_stdout:
        return f"{out.written} prompts were written to {'stdout' if str(out.path) == '-' else out.path}"
    if kept is None:
        return f"no prompts were written; {out.path} left unchanged"
    return (f"{out.written} prompts ({written_new} new) written to {kept}; {out.path} left unchanged. "
            f"Rerun with --resume to continue from them")


# While a chunk's records are written, SIGTERM waits (the handler notes it), so the count reported
# on interruption is exactly what the partial file holds.
_writing = {"active": False, "signum": None}


def _write_chunk(out, chunk, records) -> None:
    _writing["active"] = True
    try:
        for record in records:
            out.write(record)
        out.flush()
    finally:
        _writing["active"] = False
    if _writing["signum"] is not None:
        signum, _writing["signum"] = _writing["signum"], None
        raise Interrupted(signum)


def _install_sigterm():
    """SIGINT and SIGTERM end the job cleanly (partial output kept and reported); main thread only."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if _writing["active"]:
            _writing["signum"] = signum
            return
        raise Interrupted(signum)

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore_sigterm(previous) -> None:
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)


def _device(args) -> str:
    from .runtime.sessions import resolve_device

    return resolve_device(args.device, args.backend)


def _load_ranker(args):
    from .ranker import Ranker

    precision = "int8" if args.int8 else args.precision
    ranker = Ranker.from_pretrained(resolve_model(args.model), backend=args.backend, device=_device(args),
                                    precision=precision, threads=args.threads)
    if "auto" in (args.backend, precision):  # say what "auto" chose, on which CPU, and why
        d = ranker.describe()
        print(f"ranker: {d['backend']} {d['precision']} on {d['device']} ({d['cpu_model']}; {', '.join(d['isa'])}): "
              f"{d['reason']}", file=sys.stderr)
    return ranker


class _RankChunks:
    def __init__(self, args):
        self.args = args

    def load(self):
        return _load_ranker(self.args)

    def __call__(self, ranker, chunk, bar):
        from .cluster.jobs import rank_prompts

        results = rank_prompts(ranker, chunk, _options(self.args), progress=bar)
        return [{**p.record, "blender_fast": r} for p, r in zip(chunk, results)]


class _FuseChunks(_RankChunks):
    def load(self):
        from .fusion.fuser import Fuser

        from .synthetic.demo import announce_random_weights

        announce_random_weights(self.args.fuser, "fuser")  # a random fuser writes gibberish: say so
        return _load_ranker(self.args), Fuser.from_pretrained(self.args.fuser, device=_device(self.args))

    def __call__(self, work, chunk, bar):
        from .cluster.jobs import rank_prompts

        ranker, fuser = work
        results = rank_prompts(ranker, chunk, _options(self.args), progress=bar)
        top = [[p.candidates[i] for i in r["top_k"]] for p, r in zip(chunk, results)]
        fused = fuser.fuse([p.input for p in chunk], top, [p.instruction for p in chunk],
                           batch_size=self.args.batch_size, progress=False,
                           **({"num_beams": self.args.num_beams} if self.args.num_beams else {}))
        return [{**p.record, "blender_fast": r, "fused": text} for p, r, text in zip(chunk, results, fused)]


def cmd_rank(args) -> int:
    if getattr(args, "ray", False):
        from .cluster.ray_job import cmd_rank_ray

        return cmd_rank_ray(args)
    return _run_job(args, f"Ranking ({args.strategy})", _RankChunks(args), fused=False)


def cmd_fuse(args) -> int:
    return _run_job(args, f"Rank ({args.strategy}) + fuse", _FuseChunks(args), fused=True)


# -- arguments -----------------------------------------------------------------------------------------

# The one number rule (options.check_count) on the command line: integers within the same bounds.
positive_int = int_argument(1)
non_negative_int = int_argument(0)
top_k_int = int_argument(1, MAX_TOP_K)
budget_int = int_argument(1, MAX_BUDGET)
seed_int = int_argument(0, MAX_SEED)


def _add_ranker_options(p):
    p.add_argument("--model", "--ranker", dest="model", default="demo:xsmall",
                   help="a Hugging Face Hub id (llm-blender/PairRM, org/name@revision; HF cache, HF_HUB_OFFLINE=1 "
                        "for no network), a PairRM checkpoint directory, an exported ONNX directory, or demo:SHAPE "
                        "for a generated random-weight demo checkpoint")
    p.add_argument("--input", help="JSON Lines prompts, read line by line (default: the package's example prompts)")
    p.add_argument("--output", default="-",
                   help="output JSON Lines, written atomically ('-' = stdout); may be the same file as --input")
    p.add_argument("--resume", action="store_true",
                   help="keep the prompts already in --output (or its .partial) and run only the rest; a prompt "
                        "is identified by the SHA-256 of its input record and its occurrence number")
    add_engine_options(p)
    p.add_argument("--int8", action="store_true", help="same as --precision int8")
    p.add_argument("--strategy", choices=STRATEGIES, default="full",
                   help="full: all n(n-1) pairs, scores and ranks; bubble/tournament: the top k in ~2(n-1) passes")
    p.add_argument("--top-k", type=top_k_int, default=1, help="how many of the best candidates to report (0-based indices)")
    p.add_argument("--budget", type=budget_int, default=None,
                   help="swiss / knockout_rr / adaptive: forward passes per prompt they never exceed "
                        "(default: 4(n-1))")
    p.add_argument("--orders", choices=ORDERS, default="both",
                   help="both: compare (a,b) and (b,a) like llm-blender; one: (a,b) only, half the cost")
    p.add_argument("--policy", choices=POLICIES, default="max_logits", help="how full ranking aggregates comparisons")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the starting order for bubble/tournament")
    p.add_argument("--limit", type=non_negative_int, default=None, help="only the first N prompts (0: none)")
    p.add_argument("--chunk", type=positive_int, default=64,
                   help="prompts run together (in lockstep) and written per step")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(prog="blender-fast", description=DESCRIPTION, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint with the real layout",
                       description="Write a random-weight checkpoint with the real file layout.", formatter_class=fmt)
    p.add_argument("dir", help="directory to write")
    p.add_argument("--kind", choices=["ranker", "fuser", "reward-model"], default="ranker",
                   help="PairRM ranker, GenFuser (T5), or a pointwise reward model in the layout of "
                        "OpenAssistant/reward-model-deberta-v3-large-v2 (llm-blender recognises it only under a "
                        "directory ending with that id)")
    p.add_argument("--shape", default=None, help="ranker: tiny|xsmall|base|large; fuser: tiny|small (default: tiny)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random weights")
    p.add_argument("--layout", choices=["llm-blender", "hf"], default="llm-blender", help="ranker file layout")
    p.add_argument("--weights-format", choices=["safetensors", "bin"], default="safetensors", help="weights file format")
    p.set_defaults(func=cmd_make_checkpoint)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (cached) and check it against torch",
                       description="Export a PairRM checkpoint to ONNX (cached) and check it against torch.",
                       formatter_class=fmt)
    p.add_argument("dir", help="PairRM checkpoint directory (or demo:SHAPE)")
    p.add_argument("--int8", action="store_true", help="ONNX Runtime dynamic int8 quantization")
    p.add_argument("--fp16", action="store_true", help="half precision")
    p.add_argument("--out", default=None, help="write here instead of the cache")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("rank", help="rank (or select the top-k of) each prompt's candidates",
                       description="Rank (or select the top k of) each prompt's candidates. Output: each input "
                                   "record plus 'blender_fast' with top_k (0-based indices, best first), best, "
                                   "ranks (1-based, 1 = best; full only), scores (full only), comparisons, "
                                   "forward_passes, steps.", formatter_class=fmt)
    _add_ranker_options(p)
    from .cluster.ray_job import add_ray_options

    add_ray_options(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("fuse", help="select the top-k candidates and fuse them with a GenFuser",
                       description="Select the top k candidates of each prompt and fuse them with a GenFuser; "
                                   "the output adds 'fused' to the rank record.", formatter_class=fmt)
    _add_ranker_options(p)
    p.add_argument("--fuser", required=True, help="fuser (seq2seq) checkpoint directory")
    p.add_argument("--batch-size", type=positive_int, default=4, help="prompts per fuser batch")
    p.add_argument("--num-beams", type=positive_int, default=None, help="beam width (default: the fuser's, 4)")
    p.set_defaults(func=cmd_fuse, top_k=3)

    from .runtime.agreement import GATE_CANDIDATES, GATE_PROMPTS, GATE_TOP1_PCT, GATE_KENDALL_TAU

    p = sub.add_parser("gate", help="measure which faster variants rank like exact fp32 (what precision=auto may pick)",
                       description=f"Run the agreement gate on a checkpoint: rank the prompts with exact fp32 and "
                                   f"with each faster variant; a variant passes with top-1 >= {GATE_TOP1_PCT:g}% and "
                                   f"mean Kendall tau >= {GATE_KENDALL_TAU:g}. The records go to the cache, where "
                                   "precision=auto reads them.", formatter_class=fmt)
    p.add_argument("--model", "--ranker", dest="model", required=True,
                   help="the checkpoint to gate: a hub id, a PairRM checkpoint directory, or demo:SHAPE")
    p.add_argument("--input", help="JSON Lines prompts with candidates (default: the package's example prompts)")
    p.add_argument("--prompts", type=positive_int, default=GATE_PROMPTS, help="prompts to gate on (the first N)")
    p.add_argument("--candidates", type=int_argument(2), default=GATE_CANDIDATES,
                   help="candidates per prompt (the first N of each)")
    p.add_argument("--variants", default=None, help="BACKEND:PRECISION,... to measure (default: every faster "
                   "variant this CPU allows, e.g. torch:bf16,onnx:int8)")
    p.add_argument("--threads", type=int_argument(1), default=None, help="intra-op threads (default: the runtime's)")
    p.set_defaults(func=cmd_gate)

    from .serve.app import add_serve_parser  # imports no web framework until `serve` runs

    add_serve_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"blender-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
