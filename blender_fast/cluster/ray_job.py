"""Rank prompt datasets on a Ray cluster (extra ``[ray]``): Ray Data ``map_batches`` over a pool of actors,
one ``Ranker`` loaded once per actor, ``num_gpus`` per actor when given.

* :func:`rank_dataset` takes a ``ray.data.Dataset`` of prompt records (``instruction``, ``input``,
  ``candidates``: the CLI's record format) and returns one with every input column kept and a
  ``blender_fast`` column holding exactly the fields the CLI writes (``jobs.rank_prompts``).
* :func:`read_prompt_lines` / :func:`write_prompt_lines` read and write JSON Lines shards as raw lines: a
  record never goes through Arrow's type inference (candidates may be strings in one record and objects
  in the next, fields may differ between records), every malformed line is reported as ``FILE:LINE``,
  and the output lines are the single-process CLI's, byte for byte.
* :func:`rank_files` is ``blender-fast rank --ray``: JSONL or Parquet shards in, the same format out.

This module is ``blender_fast.cluster.ray_job``; ``import ray`` inside it is the top-level Ray package (absolute
imports), imported lazily so ``blender_fast`` itself never needs Ray.
"""
from __future__ import annotations

import glob
import importlib
import os
import shutil
import sys
from pathlib import Path

from .jobs import RankOptions, rank_prompts
from ..options import check_top_k_fits
from ..options import (BACKEND_CHOICES, DEFAULT_BACKEND, DEFAULT_PRECISION, DEVICE_CHOICES, check_choice, check_count, check_non_negative_number,
                       check_precision, int_argument, number_argument)
from ..jsonl.targets import output_dir as check_output_dir
from ..jsonl.prompts import UTF8_BOM, decode_record, parse_prompt
from ..jsonl.writers import dumps_record

INSTALL_HINT = "blender_fast.cluster.ray_job needs Ray Data and pyarrow: pip install 'blender-fast[ray]'"
# Column names of the raw-line layout (read_prompt_lines): private, so they never clash with a user's.
LINE = "_bf_line"      # one JSON record (input) / one output line of the CLI (output)
SOURCE = "_bf_source"  # "FILE:LINE" of the record, for error messages
RESULT = "blender_fast"
# Rows per block the JSONL reader emits, by default. A block goes to ONE actor, so rank_files makes it
# the batch size: a 200-line file in one block would keep a second actor idle.
READ_BLOCK_ROWS = 64
# Reads and writes are I/O: they request no CPU, so they stay schedulable next to actors that hold
# every CPU of a node (with Ray Data's default of 1 CPU per task, 2 one-CPU actors on a 2-CPU node leave
# the read no budget and the job hangs: measured).
IO_TASK_CPUS = 0


def _io_cpus(fn, kwargs: dict) -> dict:
    """kwargs with the I/O tasks' CPU request, in the spelling this Ray version takes (Ray >= 2.5x names
    it ``num_cpus``; older ones only take ``ray_remote_args``)."""
    import inspect

    if "num_cpus" in inspect.signature(fn).parameters:
        return {"num_cpus": IO_TASK_CPUS, **kwargs}
    return {"ray_remote_args": {"num_cpus": IO_TASK_CPUS}, **kwargs}


def _import_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    _settle_fsspec_http()
    return ray


def _settle_fsspec_http() -> None:
    """Make a failing ``fsspec.implementations.http`` import fail the same way in every thread.

    Ray Data's path resolution imports it from several threads at once and treats only
    ModuleNotFoundError as "no HTTP filesystem". Without aiohttp the import fails; a thread that waited
    on the failing import then gets ImportError ("cannot import name 'HTTPFileSystem'") instead, and a
    local Parquet read dies (seen on a fresh install). Marking the module absent up front turns every
    later attempt into the ModuleNotFoundError Ray expects. Nothing changes when the import works."""
    name = "fsspec.implementations.http"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = None  # "import" now raises ModuleNotFoundError at once


def _result_type():
    import pyarrow as pa

    return pa.struct([("strategy", pa.string()), ("top_k", pa.list_(pa.int64())), ("best", pa.int64()),
                      ("ranks", pa.list_(pa.int64())), ("scores", pa.list_(pa.float64())),
                      ("comparisons", pa.int64()), ("forward_passes", pa.int64()), ("steps", pa.int64())])


# -- the actor ---------------------------------------------------------------------------------------

class RankerActor:
    """One Ranker per actor, loaded once; ``__call__`` ranks one batch (a ``pyarrow.Table``).

    Two layouts: raw lines (``_bf_line`` + ``_bf_source`` columns, from :func:`read_prompt_lines`) give
    back one ``_bf_line`` column of output lines; any other table gets a ``blender_fast`` struct column
    appended to its own columns.
    """

    def __init__(self, model: str, options: RankOptions, ranker_kwargs: dict):
        from ..ranker import Ranker

        self.options = options
        self.ranker = Ranker.from_pretrained(model, **ranker_kwargs)

    def __call__(self, batch):
        if LINE in batch.column_names:
            return self._rank_lines(batch)
        return self._rank_columns(batch)

    def _rank_lines(self, batch):
        import pyarrow as pa

        lines = batch.column(LINE).to_pylist()
        sources = batch.column(SOURCE).to_pylist() if SOURCE in batch.column_names else [None] * len(lines)
        prompts = [parse_prompt(decode_record(line, where or "input row"), where or "input row")
                   for line, where in zip(lines, sources)]
        results = self._rank(prompts, sources)
        out = [dumps_record({**p.record, RESULT: r}) for p, r in zip(prompts, results)]
        return pa.table({LINE: pa.array(out, pa.string())})

    def _rank_columns(self, batch):
        import pyarrow as pa

        names = [c for c in ("instruction", "input", "candidates") if c in batch.column_names]
        if "candidates" not in names:
            raise ValueError(f"the dataset has no 'candidates' column (columns: {batch.column_names})")
        records = batch.select(names).to_pylist()
        paths = batch.column("path").to_pylist() if "path" in batch.column_names else [None] * len(records)
        sources = [f"{path}: record {str(r.get('instruction') or '')[:40]!r}" if path else
                   f"dataset record {str(r.get('instruction') or '')[:40]!r}" for r, path in zip(records, paths)]
        # Arrow gives absent struct fields / missing columns as None; the CLI's record would lack them.
        prompts = [parse_prompt({k: v for k, v in r.items() if v is not None}, where)
                   for r, where in zip(records, sources)]
        results = self._rank(prompts, sources)
        if RESULT in batch.column_names:
            batch = batch.drop_columns([RESULT])
        return batch.append_column(RESULT, pa.array(results, type=_result_type()))

    def _rank(self, prompts, sources):
        for prompt, where in zip(prompts, sources):
            check_top_k_fits(self.options.top_k, len(prompt.candidates), where)
        return rank_prompts(self.ranker, prompts, self.options, progress=False)


# -- the job -----------------------------------------------------------------------------------------

def prepare_model(model, backend: str = DEFAULT_BACKEND, precision: str = DEFAULT_PRECISION,
                  cache_dir=None) -> tuple[str, str | None]:
    """Check the checkpoint and warm the export cache ONCE, on the driver, before any actor starts (N
    actors exporting the same model at once would each pay the export). Returns (model path, cache dir)."""
    from ..model.cache import cache_root
    from ..model.export import cached_export
    from ..model.source import is_exported_dir, load_any_checkpoint, read_export_meta, verify_exported_dir
    from ..synthetic.demo import local_model

    # a hub id is downloaded here, once; the actors get the local directory (they may have no network)
    path = str(Path(local_model(model)).resolve())
    if is_exported_dir(path):  # runs as exported (like the CLI): checked here once, before any actor starts
        verify_exported_dir(Path(path), read_export_meta(Path(path)))
        return path, None
    ckpt = load_any_checkpoint(path)  # either kind: each actor's Ranker.from_pretrained loads it the same way
    if backend not in ("onnx", "auto"):
        return path, None
    cache = Path(cache_dir) if cache_dir else cache_root() / "onnx"
    # "auto" is decided on each actor's node (its CPU), but its exact model is always ONNX fp32 on a CPU:
    # export that once here; any fast variant an actor picks is built there.
    cached_export(ckpt, "fp32" if precision == "auto" else precision, cache)
    return path, str(cache.resolve())


def rank_dataset(ds, model, *, strategy: str = "full", top_k: int = 1, orders: str = "both",
                 policy: str = "max_logits", seed: int = 0, precision: str = DEFAULT_PRECISION,
                 backend: str = DEFAULT_BACKEND,
                 device: str | None = None, threads: int | None = 1, token_budget: int | None = None,
                 num_actors: int = 1, gpus_per_actor: float = 0, cpus_per_actor: float | None = None,
                 batch_size: int = 64, cache_dir=None, actor_cls=None, budget: int | None = None):
    """Rank every prompt record of ``ds`` on ``num_actors`` Ray actors; returns the ranked Dataset (lazy).

    Rows keep their columns and gain ``blender_fast`` (strategy, top_k, best, ranks, scores, comparisons,
    forward_passes, steps), the same values the single-process CLI writes. A dataset from
    :func:`read_prompt_lines` yields output lines instead (write them with :func:`write_prompt_lines`).

    model: a PairRM checkpoint directory readable at the same path on every node. gpus_per_actor > 0
    gives each actor that many GPUs (device defaults to "cuda" then); threads: ORT/torch threads per
    actor, and the actor's CPU request unless cpus_per_actor is given. batch_size: prompts per call
    (they run in lockstep, like the CLI's --chunk). Actors that die are restarted and their batches
    retried (Ray Data's max_restarts/max_task_retries), so every row is ranked and written once.
    actor_cls: a RankerActor subclass (hooks for tests and customisation).
    """
    _import_ray()
    options, device = check_ray_job(strategy, top_k, orders, policy, seed, backend, precision, device, num_actors,
                                 batch_size, gpus_per_actor, budget)
    model, cache = prepare_model(model, backend, precision, cache_dir)
    from ..ranker import is_exported_dir

    if is_exported_dir(model) and precision == "fp32":  # an exported model runs as exported
        precision = None
    ranker_kwargs = {"backend": backend, "device": device, "precision": precision, "threads": threads,
                     "token_budget": token_budget, "cache_dir": cache}
    cpus = cpus_per_actor if cpus_per_actor is not None else (threads or 1)
    # No max_restarts / max_task_retries here: Ray Data's actor pools default to -1 / -1 (a dead actor is
    # restarted and its unfinished tasks retried; a task's output counts only once it finishes), and
    # passing them explicitly is deprecated since Ray 2.5x. tests/test_ray.py kills an actor mid-run and
    # checks that every row comes out exactly once.
    remote_args = {"num_cpus": cpus}
    if gpus_per_actor:
        remote_args["num_gpus"] = gpus_per_actor
    from ray.data import ActorPoolStrategy

    return ds.map_batches(actor_cls or RankerActor, fn_constructor_kwargs={
        "model": model, "options": options, "ranker_kwargs": ranker_kwargs},
        batch_size=batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=num_actors), **remote_args)


def check_ray_job(strategy="full", top_k=1, orders="both", policy="max_logits", seed=0, backend=DEFAULT_BACKEND,
               precision=DEFAULT_PRECISION, device=None, num_actors=1, batch_size=64, gpus_per_actor=0, budget=None):
    """Every option checked on the driver, before Ray reads a byte: (RankOptions, device)."""
    options = RankOptions(strategy=strategy, top_k=top_k, orders=orders, policy=policy, seed=seed, budget=budget)
    check_choice("device", device or "cpu", DEVICE_CHOICES)
    if gpus_per_actor and device in (None, "auto"):
        device = "cuda"
    # "auto" without GPUs is resolved by each actor's Ranker, on the node it runs on.
    device = device or "cpu"
    # The same choices as the single-process CLI: "auto" is resolved by each actor's Ranker.
    check_choice("backend", backend, BACKEND_CHOICES)
    check_precision(precision)
    for name, value in (("num_actors", num_actors), ("batch_size", batch_size)):
        check_count(name, value)
    check_non_negative_number("gpus_per_actor", gpus_per_actor)
    return options, device


# -- JSON Lines shards as raw lines --------------------------------------------------------------------

def _lines(f, chunk: int = 1 << 22):
    pending = b""
    while True:
        data = f.read(chunk)
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _datasource_class():
    from ray.data.datasource import FileBasedDatasource

    class PromptLinesDatasource(FileBasedDatasource):
        """JSON Lines prompt files, one row per record: the raw line and its "FILE:LINE". Each line is
        checked here (valid JSON, a valid prompt record), so a malformed one fails the read with its
        file and line, before any ranking, and the file is streamed in blocks of ``block_rows`` rows."""

        def __init__(self, paths, block_rows: int = READ_BLOCK_ROWS, **kwargs):
            super().__init__(paths, **kwargs)
            self.block_rows = block_rows

        def _read_stream(self, f, path, **_reader_args):
            import pyarrow as pa

            def block(lines, sources):
                return pa.table({LINE: pa.array(lines, pa.string()), SOURCE: pa.array(sources, pa.string())})

            lines, sources = [], []
            for lineno, raw in enumerate(_lines(f), 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                if lineno == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                raw = raw.rstrip(b"\r")
                parse_prompt(decode_record(raw, where), where)  # the CLI's reader: the same errors
                lines.append(raw.decode("utf-8"))
                sources.append(where)
                if len(lines) >= self.block_rows:
                    yield block(lines, sources)
                    lines, sources = [], []
            if lines:
                yield block(lines, sources)

    return PromptLinesDatasource


def read_prompt_lines(paths, block_rows: int = READ_BLOCK_ROWS, **read_args):
    """A Dataset of the records of JSON Lines files (a path, a list of paths or a directory), as raw
    lines with their "FILE:LINE"; rank it with :func:`rank_dataset`. block_rows: rows per block (the
    unit handed to one actor: make it the batch size)."""
    ray = _import_ray()
    source = _datasource_class()(paths, block_rows=block_rows)
    return ray.data.read_datasource(source, **_io_cpus(ray.data.read_datasource, read_args))


def _sink_class():
    from ray.data.datasource import BlockBasedFileDatasink

    class LinesDatasink(BlockBasedFileDatasink):
        """Writes the ``_bf_line`` column, one line each, as the single-process CLI writes them."""

        def __init__(self, path, **kwargs):
            super().__init__(path, file_format="jsonl", **kwargs)

        def write_block_to_file(self, block, file):
            lines = block.to_arrow().column(LINE).to_pylist()
            if lines:
                file.write(("\n".join(lines) + "\n").encode("utf-8"))

    return LinesDatasink


def write_prompt_lines(ds, path, **write_args) -> None:
    """Write the output lines of a ranked :func:`read_prompt_lines` Dataset as JSON Lines shards in ``path``."""
    _import_ray()
    ds.write_datasink(_sink_class()(str(path)), **_io_cpus(ds.write_datasink, write_args))


# -- files in, files out (the CLI) ---------------------------------------------------------------------

JSONL_SUFFIXES = (".jsonl", ".json")


def input_files(spec: str) -> tuple[list[str], str]:
    """Expand a glob, a directory or a file into (files, format) with format "jsonl" or "parquet"."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix in JSONL_SUFFIXES + (".parquet",))
    else:
        files = sorted(glob.glob(spec)) if any(ch in spec for ch in "*?[") else ([spec] if path.is_file() else [])
    if not files:
        raise FileNotFoundError(f"{spec}: no input files (give a file, a directory or a glob like 'DIR/*.jsonl')")
    formats = {"parquet" if f.endswith(".parquet") else "jsonl" for f in files}
    if len(formats) > 1:
        raise ValueError(f"{spec}: mixes JSON Lines and Parquet files; rank them separately")
    return [str(Path(f).resolve()) for f in files], formats.pop()


def rank_files(input_spec: str, output_dir, model, *, limit: int | None = None, **rank_args) -> int:
    """Rank JSONL or Parquet shards into ``output_dir`` (same format as the input), on the Ray instance
    this process is connected to. The output directory appears complete or not at all (written beside
    it, then renamed). Returns the number of rows written."""
    ray = _import_ray()
    import inspect

    check_ray_job(**{k: v for k, v in rank_args.items() if k in inspect.signature(check_ray_job).parameters})
    files, fmt = input_files(input_spec)
    out = check_output_dir(output_dir)  # links followed; refused before any work (outputs.py)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if fmt == "jsonl":
        ds = read_prompt_lines(files, block_rows=rank_args.get("batch_size", READ_BLOCK_ROWS))
    else:
        ds = ray.data.read_parquet(files, include_paths=True, **_io_cpus(ray.data.read_parquet, {}))
    if limit is not None:
        ds = ds.limit(limit)
    ranked = rank_dataset(ds, model, **rank_args)
    tmp.mkdir(parents=True)  # there even when no row is written (an input of blank lines)
    try:
        if fmt == "jsonl":
            write_prompt_lines(ranked, tmp)
        else:
            ranked = ranked.drop_columns(["path"])
            ranked.write_parquet(str(tmp), **_io_cpus(ranked.write_parquet, {}))
    except BaseException as e:  # an error or Ctrl-C: no half-written directory is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception):
            raise user_error(e) from None
        raise
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return count_rows(out, fmt)


def count_rows(directory, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in Path(directory).glob("*.parquet"))
    n = 0
    for p in Path(directory).glob("*.jsonl"):
        with open(p, "rb") as f:
            n += sum(1 for _ in f)
    return n


_USER_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "FileNotFoundError": FileNotFoundError}


def user_error(e: BaseException) -> BaseException:
    """The user's error (a ValueError naming FILE:LINE, a missing file ...) from under Ray's wrappers;
    ``e`` itself when there is none. An error raised in an actor reaches the driver as text only (Ray
    pickles a UserCodeException without its cause): then the traceback's last "ValueError: ..." line."""
    import re

    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur) in _USER_ERRORS.values():
            return cur
        found = re.findall(r"^(ValueError|TypeError|FileNotFoundError): (.+)$", str(cur), re.M)
        if found:
            kind, message = found[-1]
            return _USER_ERRORS[kind](message)
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return e


# -- the CLI: blender-fast rank --ray ------------------------------------------------------------------

def add_ray_options(parser) -> None:
    """``blender-fast rank``'s options for running on Ray."""
    g = parser.add_argument_group("Ray (rank --ray: JSONL or Parquet shards in, shards out)")
    g.add_argument("--ray", action="store_true",
                   help="run on Ray: --input is files, a directory or a glob ('DIR/*.jsonl'), --output a directory")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto', 'ray://HOST:10001', HOST:6379); default: the one in "
                        "RAY_ADDRESS, else a local instance started for this run")
    g.add_argument("--num-actors", type=int_argument(1), default=None,
                   help="rankers in the pool (default: the cluster's GPUs / --gpus-per-actor, or CPUs / --threads)")
    g.add_argument("--gpus-per-actor", type=number_argument(0), default=0,
                   help="GPUs per actor (fractions share a GPU); > 0 runs the actors on --device cuda")
    g.add_argument("--ray-log-level", choices=RAY_LOG_LEVELS, default=None,
                   help="level of Ray's own log lines (default: INFO, WARNING with --quiet)")


def _default_actors(ray, gpus_per_actor: float, threads: int) -> int:
    resources = ray.cluster_resources()
    if gpus_per_actor:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // threads))


RAY_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Ray lines that say nothing true about a job run by blender-fast, dropped with the reason:
# * core_worker.cc's "has constructor arguments in the object store and max_restarts > 0" (ray#53727): Ray
#   Data itself puts every actor pool's DataContext and map function in the object store and keeps them
#   referenced for the pool's life, so a restarted actor finds them (tests/cluster/test_ray.py kills an
#   actor mid-run and gets every row once). Our own constructor arguments are a few short strings.
# * "does not have any available CPUs. The Dataset job will hang": the actors hold the CPUs by design, and
#   the reads and writes request none (IO_TASK_CPUS), so the job does not hang.
KNOWN_RAY_NOISE = ("has constructor arguments in the object store and max_restarts > 0",
                   "does not have any available CPUs")


class _DropLines:
    """Drop the lines of file descriptor ``fd`` (2: stderr, where Ray's C++ core worker logs) that contain
    one of ``patterns``, passing everything else through as it comes (progress bars' \r included), for the
    life of a Ray job. A thread copies from a pipe to the real stderr."""

    def __init__(self, patterns, fd: int = 2):
        import threading

        self.patterns = tuple(p.encode() for p in patterns)
        self.fd = fd
        sys.stderr.flush()
        self.saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self.read_end = read_end
        self.thread = threading.Thread(target=self._pump, name="blender-fast-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self.read_end, 1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not any(p in line for p in self.patterns))
            if b"\r" in pending:  # a progress bar redrawn in place: pass what it drew so far
                cut = pending.rindex(b"\r") + 1
                out, pending = out + pending[:cut], pending[cut:]
            self._write(out)
        if pending and not any(p in pending for p in self.patterns):
            self._write(pending)
        os.close(self.read_end)

    def _write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.saved, data):]
            except OSError:
                return

    def remove(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, self.fd)  # the pipe's last write end closes: the pump reads the rest, then stops
        self.thread.join(timeout=5)
        os.close(self.saved)


class _ReportedErrors:
    """While the CLI runs a Ray job, Ray Data's own ERROR lines about a failed task ("An exception was raised
    from a task ...", "Exception occurred in user code ...") are dropped: the exception reaches the CLI,
    which prints it as its one line (the user's error, found by user_error), so they would only stand in
    front of it. Progress and warnings still show."""

    LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")

    NOISE_LOGGERS = ("ray.data.dataset",)  # Python-side KNOWN_RAY_NOISE

    def __init__(self):
        import logging

        self._filter = logging.Filter()
        self._filter.filter = lambda record: record.levelno < logging.ERROR
        self._noise = logging.Filter()
        self._noise.filter = lambda record: not any(p in record.getMessage() for p in KNOWN_RAY_NOISE)
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
        for name in self.NOISE_LOGGERS:
            logging.getLogger(name).addFilter(self._noise)

    def remove(self) -> None:
        import logging

        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)
        for name in self.NOISE_LOGGERS:
            logging.getLogger(name).removeFilter(self._noise)


class _workers_import_this_package:
    """While ray.init runs, the working directory is the one holding the blender_fast this process imported.

    Ray puts the driver's working directory on every worker's import path (job_config py_driver_sys_path,
    ahead of site-packages). Run from the root of a clone with a NON-editable install, that is the source
    tree, whose blender_fast has no compiled _core: the workers then fail with "cannot import name '_core'".
    From the installed package's parent, the workers import the same package as the driver, wherever the
    command runs (an editable install's parent is the built tree itself)."""

    def __enter__(self):
        import blender_fast

        self.previous = os.getcwd()
        os.chdir(Path(blender_fast.__file__).resolve().parent.parent)
        return self

    def __exit__(self, *exc):
        os.chdir(self.previous)
        return False


def cmd_rank_ray(args) -> int:
    import time

    from ..synthetic.demo import resolve_model

    ray = _import_ray()
    if not args.input:
        raise ValueError("--ray needs --input: JSONL or Parquet files, a directory or a glob like 'DIR/*.jsonl'")
    if not args.output or args.output == "-":
        raise ValueError("--ray needs --output DIR: a directory for the output shards")
    if getattr(args, "resume", False):
        raise ValueError("--resume is not supported with --ray: give a new --output directory")
    if args.num_actors is not None and args.num_actors < 1:
        raise ValueError(f"--num-actors must be >= 1, got {args.num_actors}")
    input_files(args.input)  # fail on a bad --input or --output before starting Ray
    check_output_dir(args.output)
    model = resolve_model(args.model)
    threads = args.threads or 1
    device = "cuda" if args.gpus_per_actor and args.device == "cpu" else args.device
    log_level = args.ray_log_level or ("WARNING" if args.quiet else "INFO")
    started = not ray.is_initialized()
    try:
        noise = _DropLines(KNOWN_RAY_NOISE) if sys.platform != "win32" else None
    except OSError:  # no usable stderr descriptor (closed): nothing to keep clean
        noise = None
    try:
        if started:
            if not (args.address or os.environ.get("RAY_ADDRESS")):
                # A local instance for this run: its workers at the CLI's own priority, not Ray's default
                # nice 15 (which starves them next to any other work on the machine).
                os.environ.setdefault("RAY_worker_niceness", "0")
            with _workers_import_this_package():
                ray.init(address=args.address, include_dashboard=False, log_to_driver=not args.quiet,
                         logging_level=log_level)
        import logging

        logging.getLogger("ray.data").setLevel(log_level)
    except BaseException:
        if noise is not None:
            noise.remove()
        raise
    t0 = time.perf_counter()
    quiet_errors = _ReportedErrors()
    try:
        ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
        num_actors = args.num_actors or _default_actors(ray, args.gpus_per_actor, threads)
        t0 = time.perf_counter()
        n = rank_files(args.input, args.output, model, limit=args.limit, strategy=args.strategy, top_k=args.top_k,
                       orders=args.orders, policy=args.policy, seed=args.seed,
                       precision="int8" if args.int8 else args.precision, backend=args.backend, device=device,
                       threads=threads, num_actors=num_actors, gpus_per_actor=args.gpus_per_actor,
                       batch_size=args.chunk, budget=args.budget)
        elapsed = time.perf_counter() - t0
    except KeyboardInterrupt:  # as the CLI: one line, rc 130, nothing half-written left (rank_files cleans)
        print(f"\nblender-fast: interrupted (SIGINT) after {time.perf_counter() - t0:.1f}s: no output written; "
              f"{args.output} left as it was. Rerun the command to start again", file=sys.stderr)
        return 130
    finally:
        quiet_errors.remove()
        if started:
            ray.shutdown()
        if noise is not None:
            noise.remove()
    print(f"ranked {n} prompts on {num_actors} Ray actor(s) in {elapsed:.1f}s ({n / elapsed:.2f} prompts/s) "
          f"-> {args.output}", file=sys.stderr)
    return 0
