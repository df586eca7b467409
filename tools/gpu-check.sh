#!/bin/bash
# tools/gpu-check.sh - the GPU machine's check and benchmark run: the CUDA kernel and backend tests,
# the golden pipeline and forward tests, compute-sanitizer memcheck of the backend and of a pipeline
# generation, and decode/prompt speed of the demo and a generated 1B-class model for every backend.
#
# Prepare on the build machine (CUDA found by configure), then run on the GPU machine with R pointing
# to the prepared folder and OUT to where logs go:
#   (cd build && ../configure --enable-werror && make -j && make check TESTS=)
#   R=.devrun; mkdir -p $R/{coordinator,gpu-worker,cpu-worker,tools,compute} $R/tests/{unit,integration,cuda}
#   cp build/coordinator/pi-coordinator build/coordinator/pi-bench $R/coordinator/; cp build/gpu-worker/pi-gpu-worker $R/gpu-worker/
#   cp build/cpu-worker/pi-cpu-worker $R/cpu-worker/; cp build/tools/pi-gen-model build/tools/pi-profile $R/tools/
#   cp build/compute/pinfer-cuda.so $R/compute/   # the module: programs and tests two levels down load it
#   cp build/tests/cuda/test-{cuda,cuda-sparse,backend-cuda,ptrain-cuda} $R/tests/cuda/; cp build/tests/integration/test-pipeline $R/tests/integration/
#   cp build/tests/unit/test-forward $R/tests/unit/
#   mkdir -p $R/fx/models $R/fx/golden   # tiny-llama models and goldens from ../shared/fixtures
#   ../shared/device/bundle-libs.sh $R build/coordinator/pi-coordinator build/coordinator/pi-bench build/gpu-worker/pi-gpu-worker
#   (GPU machine) R=$PWD/.devrun OUT=/some/dir tools/gpu-check.sh      (PERF=1 adds the 7B-class study)
set -u
cd "$(dirname "$0")/.."
R=${R:-$PWD/.devrun}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$R/lib PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
T=$OUT/tests.log; : > $T
for p in cuda/test-cuda cuda/test-cuda-sparse cuda/test-backend-cuda cuda/test-ptrain-cuda integration/test-pipeline \
    unit/test-forward; do
  t=${p##*/}
  s=$(date +%s)
  timeout 200 $R/tests/$p > $OUT/$t.log 2>&1; rc=$?
  echo "$t rc=$rc ok=$(grep -c '^ok' $OUT/$t.log) notok=$(grep -c '^not ok' $OUT/$t.log) $(grep -c SKIP $OUT/$t.log) skips, $(( $(date +%s) - s )) s" | tee -a $T
  grep -E '^not ok' $OUT/$t.log | head -10
done
# races and barrier misuse in every kernel test-cuda runs (the staged matvec's reductions included)
# (cuBLAS' own sm_90 GEMM kernels, nvjet_*, and an unnamed kernel of the same cuBLAS call report
# hazards under racecheck; only hazards in pinfer's kernels, all named k_*, fail the check)
timeout 300 $CS --tool racecheck $R/tests/cuda/test-cuda > $OUT/racecheck.log 2>&1
echo "racecheck test-cuda rc=$?, hazards in pinfer's kernels: $(grep -c 'Race reported between.* at k_' $OUT/racecheck.log)" | tee -a $T
grep "RACECHECK SUMMARY" $OUT/racecheck.log | tail -1 | tee -a $T
# the sparse FFN's kernels (mask and lists, gate/up and down over a list) under racecheck and memcheck,
# and the backend's sparse path (predictors on the device, PI_CUDA_TEST=short-sparse) under memcheck
timeout 300 $CS --tool racecheck $R/tests/cuda/test-cuda-sparse --no-timing > $OUT/racecheck-sparse.log 2>&1
echo "racecheck test-cuda-sparse rc=$?, hazards in pinfer's kernels: $(grep -c 'Race reported between.* at k_' $OUT/racecheck-sparse.log)" | tee -a $T
grep "RACECHECK SUMMARY" $OUT/racecheck-sparse.log | tail -1 | tee -a $T
timeout 300 $CS --tool memcheck --leak-check full --error-exitcode 9 $R/tests/cuda/test-cuda-sparse --no-timing > $OUT/memcheck-sparse.log 2>&1
echo "memcheck test-cuda-sparse rc=$?" | tee -a $T; grep -E "ERROR SUMMARY|LEAK SUMMARY" $OUT/memcheck-sparse.log | tail -2 | tee -a $T
# the predictor trainer's kernels (the loss's shared-memory tree, the gather, Adam) under racecheck and memcheck
timeout 300 $CS --tool racecheck $R/tests/cuda/test-ptrain-cuda --no-timing > $OUT/racecheck-ptrain.log 2>&1
echo "racecheck test-ptrain-cuda rc=$?, hazards in pinfer's kernels: $(grep -c 'Race reported between.* at k_' $OUT/racecheck-ptrain.log)" | tee -a $T
timeout 300 $CS --tool memcheck --error-exitcode 9 $R/tests/cuda/test-ptrain-cuda --no-timing > $OUT/memcheck-ptrain.log 2>&1
echo "memcheck test-ptrain-cuda rc=$?" | tee -a $T; grep "ERROR SUMMARY" $OUT/memcheck-ptrain.log | tail -1 | tee -a $T
PI_CUDA_TEST=short-sparse timeout 200 $CS --tool memcheck --error-exitcode 9 $R/tests/cuda/test-backend-cuda \
  > $OUT/memcheck-backend-sparse.log 2>&1
echo "memcheck backend sparse rc=$?" | tee -a $T; grep "ERROR SUMMARY" $OUT/memcheck-backend-sparse.log | tail -1 | tee -a $T
# activation thresholds on the hot neurons (PI_CUDA_TEST=short-gated: the gate rows, pi_cuda_gate_list's
# lists and counters, the up and down rows over them, the GEMM path's zeroing) under memcheck
PI_CUDA_TEST=short-gated timeout 200 $CS --tool memcheck --error-exitcode 9 $R/tests/cuda/test-backend-cuda \
  > $OUT/memcheck-backend-gated.log 2>&1
echo "memcheck backend gated rc=$?" | tee -a $T
grep "ERROR SUMMARY" $OUT/memcheck-backend-gated.log | tail -1 | tee -a $T
# ... and through the pipeline: the tiny SiLU llama with pi-profile's thresholds (about 50% of the pairs at
# aggressive); each run's FFN sparsity line should be the single process's, the cuda backend's hot
# neurons skipping as it does (fully offloaded at hot 1) with [tune] cuda_hot_thresholds on (off, the
# default, keeps them dense: the last run's line should be lower)
TL=$PWD/tests/data/tiny-llama-q4_0.gguf
timeout 60 $R/tools/pi-profile -m $TL --random 512 -c 128 -t 4 --threshold-sparsity 0.4,0.5 \
  --sidecar /tmp/tiny-thr.gguf > /dev/null 2>&1
mkdir -p -m 700 /tmp/pirun-thr
for c in "none 0 on" "cuda 1 on" "cuda 0.5 on" "cuda 0 on" "cuda 1 off"; do set -- $c
  l=$(timeout 60 $R/coordinator/pi-coordinator --model $TL --sidecar /tmp/tiny-thr.gguf --sparsity aggressive \
      --set tune.cuda_hot_thresholds=$3 \
      --tokens 1,2,3,4,5,6,7,8 -n 8 --temp 0 --gpu-backend $1 --hot-fraction $2 --cpu-workers 1 \
      --run-dir /tmp/pirun-thr --log-level info 2>&1 | grep -oE "FFN sparsity [0-9.]+%|rror.*" | head -2 | tr '\n' ' ')
  echo "thresholds aggressive $1 hot $2 cuda_hot_thresholds $3: $l" | tee -a $T
done
# prompt streaming (PI_CUDA_TEST=short-stream: the slots, their copies and events, the wrapped weights)
PI_CUDA_TEST=short-stream timeout 200 $CS --tool memcheck --error-exitcode 9 $R/tests/cuda/test-backend-cuda \
  > $OUT/memcheck-backend-stream.log 2>&1
echo "memcheck backend stream rc=$?" | tee -a $T; grep "ERROR SUMMARY" $OUT/memcheck-backend-stream.log | tail -1 | tee -a $T
# the backend's golden checks under each other tuning, set as the backend's fields (test-backend-cuda's
# PI_CUDA_TEST_TUNE): the [tune] key's f32, and the test-only q8 everywhere (the host backend's bound),
# three-launch decode attention and no PDL
for v in cuda_matvec=f32 cuda_matvec=q8 cuda_att_dec=0 cuda_pdl=0 "cuda_matvec=q8 cuda_att_dec=0"; do
  l=$OUT/test-backend-cuda-$(echo "$v" | tr '= ' '__').log # the device tool returns no file with '=' in its name
  PI_CUDA_TEST_TUNE="$v" timeout 200 $R/tests/cuda/test-backend-cuda > $l 2>&1
  echo "$v test-backend-cuda rc=$? ok=$(grep -c '^ok' $l) notok=$(grep -c '^not ok' $l)" | tee -a $T
  grep -E '^not ok' $l | head -5
done
# the fused norm's paths (one-token q/k/v, the deferred dense FFN: hot 1) under memcheck, through the
# pipeline (tune.cuda_matvec: MC_MV, default auto) and in-process with every quantised product in 8 bits
# (the dense layers' k_glu_q8 with the norm in its quantiser)
timeout 200 $CS --tool memcheck --target-processes all --error-exitcode 9 $R/coordinator/pi-coordinator \
  --model $PWD/tests/data/demo-relu-q4_0.gguf --prompt "The jury said" -n 8 --gpu-backend cuda --hot-fraction 1 \
  --set tune.cuda_matvec=${MC_MV:-auto} --cpu-workers 1 --run-dir /tmp/pirun-mc2 --log-level warn > $OUT/memcheck-experiments.log 2>&1
echo "memcheck hot 1 pipeline rc=$?" | tee -a $T
PI_CUDA_TEST=short-dense PI_CUDA_TEST_TUNE=cuda_matvec=q8 timeout 120 $CS --tool memcheck --error-exitcode 9 $R/tests/cuda/test-backend-cuda \
  >> $OUT/memcheck-experiments.log 2>&1
echo "memcheck backend q8 rc=$?" | tee -a $T
M=$PWD/tests/data/demo-relu-q4_0.gguf
PI_CUDA_TEST=short timeout 120 $CS --tool memcheck --error-exitcode 9 $R/tests/cuda/test-backend-cuda > $OUT/memcheck.log 2>&1
echo "memcheck backend rc=$?" | tee -a $T; grep "ERROR SUMMARY" $OUT/memcheck.log | tail -1 | tee -a $T
timeout 90 $CS --tool memcheck --target-processes all --error-exitcode 9 $R/coordinator/pi-coordinator --model $M \
  --prompt "The jury said" -n 8 --gpu-backend cuda --hot-fraction 0.5 --cpu-workers 1 --run-dir /tmp/pirun-mc \
  >> $OUT/memcheck.log 2>&1
echo "memcheck pipeline rc=$?" | tee -a $T; grep "ERROR SUMMARY" $OUT/memcheck.log | tail -3 | tee -a $T
B=$OUT/bench.log
ids=1; for i in $(seq 1 127); do ids="$ids,$(( (i * 37) % 8000 + 2 ))"; done
one() { # model n label args...
  local mod=$1 n=$2 lab=$3; shift 3
  local l; l=$(timeout 90 $R/coordinator/pi-coordinator --model $mod --tokens $ids -n $n --temp 0 \
      --log-level info --run-dir /tmp/pirun-b "$@" 2>&1 >/dev/null | grep -E "tok/s|round trips|rror" | tr '\n' ' ')
  echo "$lab: $l"
}
echo "== demo (128-token prompt, 128 decode)" | tee $B
for c in "none 0 1" "host 1 1" "host 0.5 1" "host 0.5 2" "cuda 1 1" "cuda 0.5 1" "cuda 0 1"; do set -- $c
  one $M 128 "$1 hot $2 workers $3" --gpu-backend $1 --hot-fraction $2 --cpu-workers $3 --cpu-threads 8 >> $B; done
s=$(date +%s); timeout 90 $R/tools/pi-gen-model --preset 1b --act relu /tmp/m1b.gguf > /dev/null 2>&1; echo "gen 1b $(( $(date +%s) - s )) s" >> $B
echo "== 1B-class relu Q4_0 (128-token prompt, 64 decode), 8 threads per process" >> $B
for c in "none 0 1" "host 1 1" "host 0.5 1" "host 0.5 2" "cuda 1 1" "cuda 0.5 1"; do set -- $c
  one /tmp/m1b.gguf 64 "$1 hot $2 workers $3" --gpu-backend $1 --hot-fraction $2 --cpu-workers $3 --cpu-threads 8 >> $B; done
cat $B
# PERF=1: the 7B-class decode study (doc/bench-log.md, "Session 2"): pi-bench of the 7B- and
# 1B-class models at hot 1 and 0.5 through the pipeline under both values of tune.cuda_matvec, then
# Nsight Compute's per-kernel times over a 4-token decode of the 7B-class model (sum of kernel time per
# token against the wall time per token: how much of the step is launches and gaps).
if [ "${PERF:-0}" = 1 ]; then
  P=$OUT/perf.log
  timeout 120 $R/tools/pi-gen-model --preset 7b --act relu /tmp/m7b.gguf > /dev/null 2>&1; echo "gen 7b rc=$?" | tee $P
  for m in 7b 1b; do
    for v in auto f32 auto; do
      echo "# $m, tune.cuda_matvec=$v" | tee -a $P
      timeout 300 $R/coordinator/pi-bench -m /tmp/m$m.gguf -p 64 -n 128 -r 2 -t 8 --gpu-backend cuda --set tune.cuda_matvec=$v \
        --hot-fraction 1,0.5 --cpu-workers 1 --run-dir /tmp/pirun-p 2>&1 | grep -E '^\| llama|rror' | tee -a $P
    done
  done
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
  if [ -n "$NCU" ]; then
    timeout 400 $NCU --target-processes all --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
      $R/coordinator/pi-bench -m /tmp/m7b.gguf -p 0 -n 4 -r 1 --no-warmup --gpu-backend cuda --hot-fraction 1 --cpu-workers 1 \
      --run-dir /tmp/pirun-p > $OUT/ncu.txt 2>&1; echo "ncu rc=$? (per-kernel summary in ncu.txt)" | tee -a $P
  fi
fi
date
