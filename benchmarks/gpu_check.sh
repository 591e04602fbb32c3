#!/usr/bin/env bash
# GPU check, one command: our torch fp16/bf16 CUDA path vs llm-blender fp16 on the same GPU (< 8 min).
#
# Run from the repository root on the GPU machine:   bash benchmarks/gpu_check.sh [gpu_check.py args]
# Dry run here, on the CPU (tiny shape, seconds):    bash benchmarks/gpu_check.sh --dry-run
#
# That machine (Python 3.12, torch + CUDA, transformers 5.x, pybind11 + scikit-build-core + cmake) has
# no package registry. llm-blender and the transformers<5 it (and the checkpoint generator) needs travel
# as wheels in .whl/ (ignored by git), prepared beforehand on a machine with pip:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl llm-blender==0.0.2 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 \
#     dataclasses-json==0.6.7 marshmallow==3.26.1                               # ~16 MB
#
# With the device tool: run(command="OUT=$OUT bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600).
# They go into their own --target directory, first on PYTHONPATH for the main run only; a second, short
# phase reruns ours under the image's transformers 5 against the main run's scores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu_out}
export BLENDER_FAST_CACHE=${BLENDER_FAST_CACHE:-/tmp/bfcache-gpu}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"

if ! $PY -c "import blender_fast._core" 2>/dev/null; then
  echo "[gpu_check] building the extension"
  $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -5
fi

REF_PATH=""
if ls .whl/*.whl >/dev/null 2>&1; then
  echo "[gpu_check] installing the carried wheels into /tmp/ref_site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ref_site .whl/*.whl
  REF_PATH=/tmp/ref_site
fi

set +e
PYTHONPATH="$REF_PATH${PYTHONPATH:+:$PYTHONPATH}" $PY -m benchmarks.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
rc=${PIPESTATUS[0]}
set -e
if [ -f "$OUT_DIR/gpu_check.json" ] && [ -n "$REF_PATH" ]; then
  echo "[gpu_check] ours again under the image's own transformers"
  $PY -m benchmarks.gpu_check --out "$OUT_DIR" --phase t5 "$@" 2>&1 | tee -a "$OUT_DIR/gpu_check.log" || rc=1
fi
exit $rc
