#!/usr/bin/env bash
# The checks only a CUDA machine can run, in one go, with every log kept:
#   1. the CUDA-only tests (int4 tinygemm kernel, the AWQ engine on the GPU, low-VRAM placement and savings);
#   2. the full-size benchmark (benchmarks/bench_gpu.py: 7B thinker, random weights, AWQ / AWQ low-VRAM / bf16).
#
#   bash scripts/gpu_checks.sh [REPORT_DIR] [extra bench_gpu.py flags...]
#
# REPORT_DIR (default gpu-report/) receives versions.txt, nvidia-smi.txt, tests.log, bench.log and gpu.json. A step that
# fails or runs out of time does not stop the next one; the exit status is non-zero if any step failed.
# Time limits per step: GPU_TESTS_TIMEOUT (default 300 s) and GPU_BENCH_TIMEOUT (default 1800 s).
set -uo pipefail
cd "$(dirname "$0")/.."
report=${1:-gpu-report}
shift || true
mkdir -p "$report"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1

nvidia-smi >"$report/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (no driver?)" >>"$report/nvidia-smi.txt"
"$python" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"transformers", transformers.__version__, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' \
  2>&1 | tee "$report/versions.txt"

status=0
timeout "${GPU_TESTS_TIMEOUT:-300}" "$python" -m pytest -q -p no:cacheprovider -rs -k cuda \
  tests/test_awq.py tests/test_low_vram.py tests/test_engine.py 2>&1 | tee "$report/tests.log" || status=1

timeout "${GPU_BENCH_TIMEOUT:-1800}" "$python" benchmarks/bench_gpu.py --json "$report/gpu.json" "$@" 2>&1 \
  | tee "$report/bench.log" || status=1

echo "gpu_checks: $([ "$status" = 0 ] && echo passed || echo FAILED), reports in $report/"
exit "$status"
