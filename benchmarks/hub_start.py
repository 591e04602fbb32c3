"""Cold and warm start of a hub id, through the loopback hub stand-in (tests/model/hub_server.py).

cold: a fresh HF cache and export cache: download from the stand-in + ONNX export + first rank call.
warm: the same id again with HF_HUB_OFFLINE=1: no request, the cached export, no torch import.
Each start is a fresh interpreter (what a user's process pays). Run: python -m benchmarks.hub_start
[--shapes tiny,xsmall]. Shared loopback: the "download" is local disk speed, not a real network.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START = """
import time, sys
t0 = time.perf_counter()
from blender_fast import Blender
b = Blender({{"use_tqdm": False}})
b.loadranker("llm-blender/PairRM", device="cpu")
b.rank(["What is 2+2?"], [["4", "five", "Four."]])
print(round(time.perf_counter() - t0, 2), "torch" in sys.modules)
"""


def start(env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", START.format()], env=env, cwd=str(REPO), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return time.perf_counter() - t0, r.stdout.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="tiny,xsmall")
    args = p.parse_args(argv)
    from blender_fast.synthetic import make_ranker_checkpoint
    from tests.model.hub_server import HubServer, repo_from_dir

    rows = []
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            ckpt = make_ranker_checkpoint(tmp / "ckpt", shape=shape, seed=0)
            config = json.loads((ckpt / "config.json").read_text())
            config["model_name"] = "microsoft/deberta-v3-large"
            (tmp / "config.json").write_text(json.dumps(config))
            repos = {"llm-blender/PairRM": repo_from_dir(ckpt, exclude=("blender_fast.json",),
                                                         extra={"config.json": tmp / "config.json"}),
                     "microsoft/deberta-v3-large": repo_from_dir(ckpt / "backbone")}
            weights = (ckpt / "model.safetensors").stat().st_size
            with HubServer(repos) as hub:
                env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf"),
                       "BLENDER_FAST_CACHE": str(tmp / "bf"), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
                cold, cold_out = start(env)
                n_cold = len(hub.requests)
                hub.reset()
                warm, warm_out = start({**env, "HF_HUB_OFFLINE": "1"})
                rows.append((shape, weights / 1e6, cold, warm, n_cold, len(hub.requests), warm_out.split()[-1]))
    print("| shape | weights MB | cold start s | warm start s | requests cold | requests warm | torch imported warm |")
    print("|---|---|---|---|---|---|---|")
    for shape, mb, cold, warm, nc, nw, torch_in in rows:
        print(f"| {shape} | {mb:.0f} | {cold:.1f} | {warm:.1f} | {nc} | {nw} | {torch_in} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
