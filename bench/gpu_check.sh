#!/usr/bin/env bash
# The GPU check: on a CUDA machine with torch, triton and pytest (pytest-benchmark and matplotlib if present; no
# verl, no network needed)
#   bash bench/gpu_check.sh OUTDIR
# runs the CUDA tests and every benchmark and leaves each result (JSON/MD, PNG when matplotlib is there) and log in
# OUTDIR. The step limits add up to under 8 minutes, a cold Triton compile cache included; a step that fails or runs
# out of time is reported and the next one still runs.
set -u
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUTDIR/NAME.log, remember failures
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (limit ${limit}s)" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$out/$name.log" | tee -a "$out/summary.txt"
  echo "   exit $rc after $((SECONDS - start))s" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u; } >"$out/environment.txt" 2>&1
step cuda_tests 200 $PY -m pytest -q -p no:cacheprovider tests/test_ntl_loss.py tests/test_logprob_entropy_ntl.py \
  tests/test_hidden_digits.py --junitxml="$out/cuda_tests.xml"
step bench_ntl_loss_bf16 50 $PY -m bench.bench_ntl_loss --device cuda --rows 32768 --out "$out"
step bench_ntl_loss_fp32 40 $PY -m bench.bench_ntl_loss --device cuda --rows 32768 --dtype float32 --out "$out"
step bench_actor 80 $PY -m bench.bench_actor --out "$out"
[ -f bench/bench_engine.py ] && step bench_engine 40 $PY -m bench.bench_engine --device cuda --out "$out"
step pytest_benchmark 40 $PY -m pytest -q -p no:cacheprovider bench/test_bench_ntl_loss.py \
  --benchmark-json="$out/pytest_benchmark.json"
echo "overall exit $status" | tee -a "$out/summary.txt"
exit $status
