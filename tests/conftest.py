"""Shared fixtures. Tests never touch the network: hubs are switched off before anything imports."""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exported models go to a per-run cache, never the user's.
if "BLENDER_FAST_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="blender_fast_test_cache_")
    os.environ["BLENDER_FAST_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
# The shared AlpacaEval candidates (docs/data.md): $BLENDER_FAST_DATA (the file, or the folder holding it),
# else ../shared/data/alpaca_eval_candidates beside the repo. A plain clone has none: those tests skip.
DATA_DIR = Path(os.environ.get("BLENDER_FAST_DATA", REPO.parent / "shared" / "data" / "alpaca_eval_candidates"))
DATA_FILE_NAME = "candidates_dev.jsonl"
# .ci/run sets this: there, a missing optional dependency or data file is a failure, not a skip.
STRICT = bool(os.environ.get("CI")) or os.environ.get("BLENDER_FAST_STRICT_TESTS") == "1"


def require(module: str):
    """Import an optional dependency; skip locally when it is missing, fail in CI."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if STRICT:
            pytest.fail(f"{module} is required in CI but cannot be imported: {e}")
        pytest.skip(f"{module} not installed", allow_module_level=True)


def shared_data_file() -> Path:
    """The shared AlpacaEval file; skip locally when it is missing, fail in CI."""
    path = DATA_DIR if DATA_DIR.suffix == ".jsonl" else DATA_DIR / DATA_FILE_NAME
    if not path.is_file():
        if STRICT:
            pytest.fail(f"shared data missing in CI: {path}")
        pytest.skip(f"needs the shared AlpacaEval data, not found at {path} (set BLENDER_FAST_DATA; see docs/data.md)")
    return path


def load_shared_records(limit: int | None = None) -> list[dict]:
    path = shared_data_file()
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            records.append(json.loads(line))
            if limit and len(records) >= limit:
                break
    return records


@pytest.fixture(scope="session")
def shared_records():
    return load_shared_records()


def import_deberta_quietly() -> None:
    """Import transformers' DeBERTa modeling once with torch.jit.script's import-time DeprecationWarning
    dropped (an error under pytest), before llm-blender or the Auto classes reach it. The generators used
    to import it this way; they now write checkpoints with numpy, so the fixtures that hand a generated
    checkpoint to llm-blender do it (as the engine's export does, model/export.py)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        importlib.import_module("transformers.models.deberta_v2.modeling_deberta_v2")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight PairRM checkpoint (tiny shape, llm-blender layout) shared by the whole run.

    BLENDER_FAST_TEST_CHECKPOINT points at one made beforehand: CI generates it with transformers 4 and
    then reruns the engine tests under transformers 5 with it.
    """
    if os.environ.get("BLENDER_FAST_TEST_CHECKPOINT"):
        return Path(os.environ["BLENDER_FAST_TEST_CHECKPOINT"])
    require("torch")
    import_deberta_quietly()
    from blender_fast.synthetic import make_ranker_checkpoint

    return make_ranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", shape="tiny", seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine extra torch threads
    spin against each other (50x slower). Modules opt in; the setting is restored after them."""
    torch = require("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def live_server(engine, close_engine: bool = True, wait_s: float = 30.0, **app_kwargs):
    """The HTTP app (serve/app.py create_app) for ``engine`` on 127.0.0.1, a port the OS picks, served by
    uvicorn in a thread; yields its URL. Closes ``engine`` afterwards unless it belongs to a fixture."""
    require("fastapi")
    require("uvicorn")
    require("prometheus_client")
    import threading
    import time

    import uvicorn

    from blender_fast.serve.app import create_app
    from blender_fast.serve.startup import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, **app_kwargs), log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + wait_s
    while not server.started and time.monotonic() < end:
        time.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(wait_s)
        if close_engine:
            engine.close(timeout=wait_s)


@contextlib.contextmanager
def serve_process(*args: str, wait_s: float = 120.0):
    """A real `blender-fast serve ARGS --port 0` process; yields (process, its startup line) once that line,
    which holds the URL (``line.split()[2]``), is printed. The rest of stderr is the caller's to read.
    Killed on the way out if it is still running."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "blender_fast.cli", "serve", *args, "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = ""
        end = time.monotonic() + wait_s
        while "http://" not in line and time.monotonic() < end and proc.poll() is None:
            line = proc.stderr.readline()
        assert "http://" in line, f"no startup line with a URL: {line!r}"
        yield proc, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    """A random-weight pointwise reward model (tiny shape, OpenAssistant's layout), under a path that ends
    with the repo id, as llm-blender needs to recognise it (its only rule).

    BLENDER_FAST_TEST_REWARD_MODEL points at one made beforehand (CI's transformers-5 run: the generator
    needs transformers 4)."""
    if os.environ.get("BLENDER_FAST_TEST_REWARD_MODEL"):
        return Path(os.environ["BLENDER_FAST_TEST_REWARD_MODEL"])
    require("torch")
    import_deberta_quietly()
    from blender_fast.synthetic import make_reward_model_checkpoint

    root = tmp_path_factory.mktemp("rm")
    return make_reward_model_checkpoint(root / "OpenAssistant" / "reward-model-deberta-v3-large-v2", shape="tiny", seed=0)
