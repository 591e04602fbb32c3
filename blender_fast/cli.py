"""blender-fast command line: rank, select and fuse LLM answers with PairRM; export and generate checkpoints.

Output files are written atomically (a temp file in the same directory, renamed at the end): a failed or
interrupted run never truncates an existing output, and --output may equal --input.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .synthetic.demo import local_model, resolve_model
from .runtime.loading import ranker_details, startup_line
from .options import check_top_k_fits, resolve_device
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

    from .jsonl.targets import output_dir

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.out:  # before the checkpoint loads: a file there, or an unwritable place, is refused now
        output_dir(args.out, "export --out", may_hold_files=True)
    # local_model, not resolve_model: the "ranking with a GENERATED checkpoint" notice is about ranking
    report = export_command(str(local_model(args.dir)), precision=precision, out=args.out)
    state = "cached, not re-exported" if report.cached else f"exported in {report.seconds:.1f}s"
    print(f"{report.path} ({precision}, {state}); {report.check_line()}")
    return 0



def cmd_gate(args) -> int:
    """Run the agreement gate (runtime/agreement.py) and write the records precision="auto" reads."""
    from .jsonl.prompts import example_prompts_path, read_prompts
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


# -- the job -------------------------------------------------------------------------------------------
#
# No run loses finished work (docs/cli.md, "What a run keeps"):
# * the output is written beside itself and renamed at the end; a failure or a signal keeps what was written
#   as <output>.partial, and says how many records it holds, counted on disk;
# * a .partial, or the temp file of a killed run, is finished work: a run without --resume is refused while
#   one exists, and --resume keeps every finished record of the old output, the .partial and the temp files
#   (records made with other options are refused by name, never dropped);
# * with --output equal to --input, a --limit run copies the prompts after the limit as they were.

class Interrupted(Exception):
    """SIGINT / SIGTERM arrived: stop between model batches and keep what was written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _options(args):
    from .cluster.jobs import RankOptions

    return RankOptions(strategy=args.strategy, top_k=args.top_k, orders=args.orders, policy=args.policy, seed=args.seed,
                      budget=args.budget)


class _Scan:
    """What one streaming pass over the input found, before any model work."""

    def __init__(self):
        self.prompts = 0          # prompts within --limit
        self.passes = 0           # model rows they cost (the progress bar's total)
        self.keys: set = set()    # their identities (for --resume and the in-place copy)
        self.repeats: dict = {}   # prompt number -> occurrence, for the (rare) repeated records only
        self.end_offset = 0       # byte offset just after the last prompt within --limit
        self.more = False         # the input holds lines after that prompt


def _scan_input(source, limit, options, want_keys: bool) -> _Scan:
    """One streaming pass before any model work: validates every line within --limit (errors name
    file:line), checks the options against each prompt (--top-k, --budget), counts prompts and model rows
    for the progress bar, and (for --resume) collects the prompts' identities."""
    from .cluster.jobs import expected_forward_passes
    from .jsonl.prompts import decode_record, iter_lines, parse_prompt, record_digest
    from .selection.budgets import comparison_budgets

    scan = _Scan()
    if limit == 0:
        scan.more = any(True for _ in iter_lines(source.path))
        return scan
    for lineno, raw, end in _lines_with_offsets(source.path):
        if limit is not None and scan.prompts >= limit:
            scan.more = True
            break
        where = f"{source.name}:{lineno}"
        prompt = parse_prompt(decode_record(raw, where), where)
        n = len(prompt.candidates)
        check_top_k_fits(options.top_k, n, where)
        try:
            comparison_budgets(options.budget, options.strategy, [n], options.top_k, options.orders)
        except ValueError as e:
            raise ValueError(f"{where}: --{str(e).replace(' of prompt 0', '')}") from None
        scan.prompts += 1
        scan.end_offset = end
        scan.passes += expected_forward_passes(n, options)
        if want_keys:
            key, occurrence = _new_key(record_digest(prompt.record), scan.keys)
            scan.keys.add(key)
            if occurrence > 1:
                scan.repeats[scan.prompts - 1] = occurrence
    return scan


def _lines_with_offsets(path):
    """jsonl.prompts.iter_lines with the byte offset after each line's physical line."""
    from .jsonl.prompts import UTF8_BOM

    offset = 0
    lineno = 0
    with open(path, "rb") as f:
        for physical in f:
            offset += len(physical)
            raw = physical[len(UTF8_BOM):] if lineno == 0 and physical.startswith(UTF8_BOM) else physical
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
            for piece in raw.split(b"\r") if b"\r" in raw else (raw,):
                lineno += 1
                if piece.strip():
                    yield lineno, piece, offset


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


def _result_options(record) -> tuple | None:
    """(strategy, top-k, fused) of a finished record; None for a record without a result."""
    result = record.get("blender_fast") if isinstance(record, dict) else None
    if not isinstance(result, dict):
        return None
    return result.get("strategy"), len(result.get("top_k") or ()), "fused" in record


def _is_done(found: tuple | None, options, fused: bool) -> bool:
    return (found is not None and found[0] == options.strategy and found[1] == options.top_k
            and (not fused or found[2]))


def _finished_records(source):
    """(raw line, record) of each readable record of an earlier output; a line cut short by a crash, or
    not UTF-8 / JSON, is no finished record (that prompt is simply redone)."""
    from .jsonl.prompts import decode_record, iter_lines

    for _lineno, raw in iter_lines(source):
        try:
            record = decode_record(raw, "")
        except ValueError:
            continue
        if isinstance(record, dict):
            yield raw, record


def _earlier_work(path: Path) -> list[Path]:
    """Files holding finished records of interrupted runs into this output: its .partial and the temp files
    of killed runs."""
    from .jsonl.writers import leftover_temps, partial_path

    return [p for p in [partial_path(path), *leftover_temps(path)] if p.is_file() and p.stat().st_size]


def _check_resume_sources(sources, options, fused: bool) -> None:
    """--resume keeps every finished record: records made with other options cannot be kept in this
    output, so the run is refused before any work, naming the file and the options that differ."""
    for source in sources:
        other: dict = {}
        for _raw, record in _finished_records(source):
            found = _result_options(record)
            if found is not None and not _is_done(found, options, fused):
                other[found] = other.get(found, 0) + 1
        if other:
            (strategy, top_k, was_fused), count = max(other.items(), key=lambda kv: kv[1])
            made = f"--strategy {strategy} --top-k {top_k}" + ("" if was_fused or not fused else " (rank, not fuse)")
            raise ValueError(
                f"--resume: {source} holds {sum(other.values())} finished records made with other options "
                f"({made}; this run: --strategy {options.strategy} --top-k {options.top_k}); they are kept "
                f"only by a run with their options. Rerun with those options, or give another --output; "
                f"nothing was changed")


def _carry_over(out, sources, done_keys: set) -> int:
    """--resume: copy every finished record of earlier runs (the old output, its .partial, the temp files
    of killed runs), each once; their identities go into done_keys. Returns how many were copied."""
    from .jsonl.prompts import record_digest

    copied = 0
    for source in sources:
        seen: set[bytes] = set()
        for raw, record in _finished_records(source):
            key = _new_key(record_digest(record), seen)[0]
            seen.add(key)
            if _result_options(record) is not None and key not in done_keys:
                out.write_line(raw.decode("utf-8"))
                done_keys.add(key)
                copied += 1
    return copied


def _copy_rest(out, source, scan, done_keys: set) -> int:
    """--output = --input with --limit: the lines after the limit, as they were (those already in the
    output from --resume excepted). Returns how many lines were copied."""
    from .jsonl.prompts import decode_record, record_digest

    copied = 0
    seen = set(scan.keys)
    with open(source.path, "rb") as f:
        f.seek(scan.end_offset)
        for physical in f:
            if done_keys:
                try:
                    record = decode_record(physical.strip(), "")
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    key = _new_key(record_digest(record), seen)[0]
                    seen.add(key)
                    if key in done_keys:
                        continue
            if not physical.endswith(b"\n"):
                physical += b"\n"
            out.write_raw(physical)
            copied += 1
    return copied


def _same_file(source, target) -> bool:
    try:
        return not source.spooled and not target.streaming and os.path.samefile(source.path, target.path)
    except OSError:
        return False


def _run_job(args, desc: str, process_chunk, fused: bool) -> int:
    """Stream the input in chunks of --chunk prompts, run process_chunk(prompts, bar) -> records, write
    them atomically; Ctrl-C / SIGTERM stop cleanly, saying what was kept where."""
    from .jsonl.prompts import InputFile, example_prompts_path, input_file
    from .jsonl.targets import output_file

    options = _options(args)
    target = output_file(args.output)  # before any work: a directory or an unwritable place is refused now
    if args.resume and target.streaming:
        raise ValueError("--resume needs an --output file (a regular file, not '-' or a device)")
    if args.input:
        source = input_file(args.input)
    else:
        examples = example_prompts_path()
        source = InputFile(examples, str(examples))
    try:
        return _run_checked(args, desc, process_chunk, fused, options, target, source)
    finally:
        source.close()


def _run_checked(args, desc, process_chunk, fused, options, target, source) -> int:
    from tqdm.auto import tqdm

    from .jsonl.prompts import iter_prompts, record_digest
    from .jsonl.writers import AtomicJsonl, StreamJsonl

    in_place = _same_file(source, target)
    scan = _scan_input(source, args.limit, options, want_keys=args.resume or in_place)
    earlier = [] if target.streaming else _earlier_work(target.path)
    if earlier and not args.resume:
        raise ValueError(f"{earlier[0]} holds finished records of an interrupted run: pass --resume to keep them "
                         f"(or delete it to start over); nothing was changed")
    sources = ([target.path] if target.path.is_file() else []) + earlier if args.resume else []
    if args.resume:
        _check_resume_sources(sources, options, fused)
    out = StreamJsonl(target) if target.streaming else AtomicJsonl(target)
    carried = copied = 0  # records kept from earlier runs (--resume); lines after --limit copied as they were
    t0 = time.perf_counter()
    load_s = 0.0
    previous_handler = _install_sigterm()
    try:
        done: set = set()
        if args.resume:
            carried = _carry_over(out, sources, done)
            wanted_done = len(scan.keys & done)
            print(f"--resume: {wanted_done} of {scan.prompts} prompts already done; {carried} finished records "
                  f"kept", file=sys.stderr)
        todo = scan.prompts - (len(scan.keys & done) if done else 0)
        work = None
        if todo:
            work = process_chunk.load()
        load_s = time.perf_counter() - t0  # model load (and, the first time, export) is reported apart
        t0 = time.perf_counter()
        with tqdm(total=scan.passes, desc=desc, unit="pair", disable=args.quiet or not todo, smoothing=0.1) as bar:
            chunk = []
            for number, prompt in enumerate(iter_prompts(source.path, args.limit, name=source.name)):
                if done and _key(record_digest(prompt.record), scan.repeats.get(number, 1)) in done:
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
        if in_place and scan.more:
            copied = _copy_rest(out, source, scan, done)
        out.commit(consumed=earlier)
    except (KeyboardInterrupt, Interrupted) as e:
        kept = out.keep_partial(consumed=earlier)
        name = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
        print(f"\nblender-fast: interrupted ({name}): {_kept_message(out, kept, carried, target.streaming)}",
              file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
    except BaseException:
        kept = out.keep_partial(consumed=earlier)
        if kept is not None or (target.streaming and out.written):
            print(f"blender-fast: stopped: {_kept_message(out, kept, carried, target.streaming)}", file=sys.stderr)
        raise
    finally:
        _restore_sigterm(previous_handler)
    elapsed = time.perf_counter() - t0
    written_new = out.written - carried - copied
    print(f"{desc}: {written_new} prompts in {elapsed:.1f}s ({written_new / max(elapsed, 1e-9):.2f} prompts/s; "
          f"model loaded in {load_s:.1f}s before)"
          f"{f', {carried} kept from earlier runs' if args.resume else ''}"
          f"{f', {copied} lines after --limit copied as they were' if copied else ''} -> {args.output}",
          file=sys.stderr)
    return 0


def _kept_message(out, kept, carried, to_stdout) -> str:
    if to_stdout:
        return f"{out.written} prompts were written to {'stdout' if str(out.path) == '-' else out.path}"
    if kept is None:
        return f"no prompts were written; {out.path} left unchanged"
    return (f"{out.written} prompts ({max(0, out.written - carried)} new) written to {kept}; {out.path} left "
            f"unchanged. Rerun with --resume to continue from them")


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
    return resolve_device(args.device, args.backend)


def _load_ranker(args):
    from .ranker import Ranker

    precision = "int8" if args.int8 else args.precision
    ranker = Ranker.from_pretrained(resolve_model(args.model), backend=args.backend, device=_device(args),
                                    precision=precision, threads=args.threads)
    if "auto" in (args.backend, precision) or args.verbose:  # say what "auto" chose, in a few words
        d = ranker.describe()
        print(startup_line(d), file=sys.stderr)
        if args.verbose:  # the details: the CPU, its ISA and auto-selection's whole reason
            print(f"ranker: {ranker_details(d)}", file=sys.stderr)
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
        from .fusion.fuser import Fuser, fuser_directory

        from .synthetic.demo import announce_random_weights

        # The fuser's source first (a hub id fetched, the directory checked): a wrong --fuser is reported
        # before the ranker loads, not after it.
        fuser_dir = fuser_directory(self.args.fuser)
        announce_random_weights(fuser_dir, "fuser")  # a random fuser writes gibberish: say so
        return _load_ranker(self.args), Fuser.from_pretrained(str(fuser_dir), device=_device(self.args))

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
    p.add_argument("--verbose", action="store_true",
                   help="say in full how the ranker runs and why (CPU, ISA, auto-selection's reasons)")


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(prog="blender-fast", description=DESCRIPTION, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint with the real layout",
                       description="Write a random-weight checkpoint with the real file layout.", formatter_class=fmt)
    p.add_argument("dir", help="directory to write")
    p.add_argument("--kind", choices=["ranker", "fuser", "reward-model"], default="ranker",
                   help="PairRM ranker, GenFuser (T5), or a reward model in the layout of "
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
    p.add_argument("--fuser", required=True,
                   help="GenFuser (seq2seq): a Hugging Face Hub id (llm-blender/gen_fuser_3b, org/name@revision) "
                        "or a checkpoint directory")
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

    from .serve.startup import add_serve_parser  # imports no web framework until `serve` runs

    add_serve_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError, RuntimeError) as e:
        print(f"blender-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
