"""Cold start of a hub id: download + build + first call, each in a fresh interpreter with empty caches.

The loopback hub stand-in (tests/model/hub_server.py: run from the clone) serves the run's checkpoint as
llm-blender/PairRM, its backbone named by hub id and served as its own repo, as the real one is.
llm-blender: `Blender().loadranker(HUB_ID)` + one rank; ours: `Ranker.from_pretrained(HUB_ID)` + one rank;
alternated. Wall seconds of the child process, its peak RSS (VmHWM: its own, not the parent's that rusage
carries over the fork), whether it imported torch and the requests it made to the hub. The "download" runs at loopback disk speed, not a network's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, load_average, log
from .tables import doc_body, fmt_num, md_table

HUB_ID, BACKBONE = "llm-blender/PairRM", "microsoft/deberta-v3-large"
START = {"llm-blender": "import llm_blender\nb = llm_blender.Blender()\nb.loadranker(HUB_ID, device='cpu')\nb.rank(*ONE)",
         "blender-fast": "from blender_fast import Ranker\nRanker.from_pretrained(HUB_ID, device='cpu').rank(*ONE)"}
CHILD = ("import re, sys\nHUB_ID, ONE = {hub_id!r}, (['What is 2+2?'], [['4', 'five', 'Four.']])\n{start}\n"
         "print('torch' in sys.modules, re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))")


def cold_start(name: str, hub_url: str, home: Path) -> dict:
    """One fresh interpreter with empty caches under `home` (HF cache and blender-fast cache alike)."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home / "hf"), BLENDER_FAST_CACHE=str(home / "bf"), HF_HUB_OFFLINE="0",
               TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(hub_id=HUB_ID, start=START[name])], env=env, cwd=home,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"coldstart: {name} failed: {proc.stderr[-3000:]}")
    torch_imported, hwm_kb = proc.stdout.split()[-2:]
    return {"wall_s": wall, "peak_rss_mb": int(hwm_kb) / 1024, "torch_imported": torch_imported == "True"}


def run_coldstart_section(ckpt, repeats: int = 1) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.model.hub_server import HubServer, repo_from_dir

    ckpt, runs = Path(ckpt), {name: [] for name in START}
    with tempfile.TemporaryDirectory(prefix="bench_coldstart_") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({**json.loads((ckpt / "config.json").read_text()), "model_name": BACKBONE}))
        with HubServer({HUB_ID: repo_from_dir(ckpt, exclude=("blender_fast.json",),
                                              extra={"config.json": config, "ranker_config.json": config}),
                        BACKBONE: repo_from_dir(ckpt / "backbone")}) as hub:
            for r in range(repeats):
                for name in START:
                    hub.reset()
                    load = load_average()
                    runs[name].append({**cold_start(name, hub.url, Path(tmp) / f"{name}-{r}"),
                                       "hub_requests": len(hub.requests), "load_average": load})
                    log(f"coldstart: {name} {runs[name][-1]}")
    return {"hub_id": HUB_ID, "checkpoint": str(ckpt), "weights_mb": (ckpt / "model.safetensors").stat().st_size / 2**20,
            "repeats": repeats, "runs": runs}


def coldstart_md(res: dict) -> list[str]:
    return ["## Cold start of a hub id (download + build + first call)", "", doc_body(__doc__), "",
            f"`{res['hub_id']}` served from `{res['checkpoint']}` ({res['weights_mb']:.0f} MB of weights), "
            f"{res['repeats']} cold start(s) each.", ""] + md_table(
        ["engine", "wall s", "peak RSS MB", "torch imported", "hub requests", "load average"],
        [[name, fmt_num(r["wall_s"], 1), fmt_num(r["peak_rss_mb"], 0), "yes" if r["torch_imported"] else "no",
          r["hub_requests"], r["load_average"]] for name, rs in res["runs"].items() for r in rs])
