#!/usr/bin/env bash
# On a CUDA machine with torch, triton, pytest and pytest-benchmark (no network, verl not needed):
#   bash bench/gpu_check.sh OUTDIR
# runs the CUDA tests and the benchmarks and leaves every result in OUTDIR (about 5 minutes on an H100).
set -u
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUTDIR/NAME.log, remember failures
  local name=$1 limit=$2
  shift 2
  echo "== $name" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$out/$name.log" | tee -a "$out/summary.txt"
  echo "   exit $rc" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; date -u; } >"$out/environment.txt" 2>&1
kernel_tests=$(ls tests/test_ntl_loss.py tests/test_logprob_entropy_ntl.py tests/test_hidden_digits.py 2>/dev/null)
step cuda_tests 120 python -m pytest -q -p no:cacheprovider $kernel_tests --junitxml="$out/cuda_tests.xml"
step bench_ntl_loss_32k 90 python -m bench.bench_ntl_loss --device cuda --rows 32768 --out "$out"
step bench_ntl_loss_fp32 60 python -m bench.bench_ntl_loss --device cuda --rows 32768 --dtype float32 --out "$out"
[ -f bench/bench_actor.py ] && step bench_actor 120 python -m bench.bench_actor --out "$out"
step bench_engine 240 python -m bench.bench_engine --device cuda --out "$out"
step pytest_benchmark 60 python -m pytest -q -p no:cacheprovider bench/test_bench_ntl_loss.py --benchmark-json="$out/pytest_benchmark.json"
echo "overall exit $status" | tee -a "$out/summary.txt"
exit $status
