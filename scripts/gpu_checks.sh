#!/usr/bin/env bash
# The checks only a CUDA machine can run, in one go, with every log kept:
#   1. the CUDA-only tests: the int4 tinygemm kernel and its unpacked layout, the AWQ engine on the GPU,
#      low-VRAM placement and savings, the out-of-memory retry's memory, compiled decode's greedy tokens;
#   2. per-token decode overhead of a 28-layer tiny thinker, eager against compiled with CUDA graphs
#      (benchmarks/bench_compile.py);
#   3. the full-size benchmark (benchmarks/bench_gpu.py: 7B thinker, random weights): the int4-against-
#      dequantised crossover, then GPU_BENCH_MODES (default: the eager AWQ path, the fast AWQ path with
#      compiled decode and dequantised prefill, bf16 eager and compiled), side by side in one run;
#   4. word timestamps on CUDA: the tiny aligner beside the tiny model through the server's path, with and
#      without words (benchmarks/bench_alignment.py; the bf16 aligner on the GPU, the plumbing's cost).
#
#   bash scripts/gpu_checks.sh [REPORT_DIR] [extra bench_gpu.py flags...]
#
# REPORT_DIR (default gpu-report/) receives versions.txt, nvidia-smi.txt, tests.log, compile.log, compile.json,
# bench.log, gpu.json, alignment.log and alignment.json. A step that fails or runs out of time does not stop
# the next one; the exit status is non-zero if any step failed. Time limits per step: GPU_TESTS_TIMEOUT (default 240 s), GPU_COMPILE_TIMEOUT
# (default 150 s), GPU_BENCH_TIMEOUT (default 1800 s; one device call allows 600 s in all) and GPU_ALIGN_TIMEOUT
# (default 120 s).
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
timeout "${GPU_TESTS_TIMEOUT:-240}" "$python" -m pytest -q -p no:cacheprovider -rs -k cuda \
  tests/engines/test_awq.py tests/engines/test_low_vram.py tests/engines/test_qwen2_5_omni.py tests/engines/test_compiled_decode.py 2>&1 \
  | tee "$report/tests.log" || status=1

timeout "${GPU_COMPILE_TIMEOUT:-150}" "$python" benchmarks/bench_compile.py --device cuda \
  --json "$report/compile.json" 2>&1 | tee "$report/compile.log" || status=1

# shellcheck disable=SC2086  # GPU_BENCH_MODES is a list of words
timeout "${GPU_BENCH_TIMEOUT:-1800}" "$python" benchmarks/bench_gpu.py \
  --modes ${GPU_BENCH_MODES:-awq awq_fast bf16 bf16_compiled} --segments 30 60 --batches 1 8 16 \
  --json "$report/gpu.json" "$@" 2>&1 \
  | tee "$report/bench.log" || status=1

timeout "${GPU_ALIGN_TIMEOUT:-120}" "$python" benchmarks/bench_alignment.py --device cuda --seconds 60 \
  --json "$report/alignment.json" 2>&1 | tee "$report/alignment.log" || status=1

echo "gpu_checks: $([ "$status" = 0 ] && echo passed || echo FAILED), reports in $report/"
exit "$status"
