#!/bin/bash
# Issue 17, item 1, on the GPU machine: the predictor trainer's cuda engine. tests/cuda/test-ptrain-cuda (the
# cuda engine against the cpu engine, run-to-run bits, then a 7B-shaped layer's timing: epochs per rank on
# the GPU, a CPU step beside them, a whole layer); the same without the timing under compute-sanitizer
# memcheck and racecheck while the CPU writes a 7B-shaped Q4_0 model (--locality --gate-rank 16:
# predictors can foresee its neurons); then pi-train-predictors --device cuda on it over 4096 random
# tokens: the capture (the forward pass on the CPU) and the training (on the GPU) timed apart by the
# tool's own lines.
# usage: bench-train-7b.sh [SECONDS]   (default 540: the sanitizers and the training are cut to fit)
# Staging on the build machine (a CUDA build; `make && make check TESTS=` builds the test programs):
#   R=.devbench; mkdir -p $R/compute $R/tools $R/tests/cuda
#   cp build/compute/pinfer-cuda.so $R/compute/; cp build/tools/pi-gen-model build/tools/pi-train-predictors $R/tools/
#   cp build/tests/cuda/test-ptrain-cuda $R/tests/cuda/
#   ../shared/device/bundle-libs.sh $R build/tools/pi-train-predictors build/tests/cuda/test-ptrain-cuda
# (the programs load the module from the compute/ one or two levels above them). Run there from the source
# tree: `R=... OUT=... bash tools/device/bench-train-7b.sh`; results in $OUT/train.log.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/train.log
export LD_LIBRARY_PATH=$R/lib
BUDGET=${1:-540}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } > "$L" 2>&1
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" >> "$L"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
M=/dev/shm/m7t.gguf
"$R/tools/pi-gen-model" --preset 7b --type q4_0 --locality --gate-rank 16 $M > "$O/gen.log" 2>&1 &
GP=$!
t=$O/test-ptrain-cuda.log
timeout 150 "$R/tests/cuda/test-ptrain-cuda" > "$t" 2>&1
ts "test-ptrain-cuda rc=$? ok=$(grep -c '^ok' "$t") notok=$(grep -c '^not ok' "$t")"
grep -E '^not ok|^# ' "$t" >> "$L"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$CS" ]; then
  timeout 90 "$CS" --tool memcheck --leak-check full --error-exitcode 9 "$R/tests/cuda/test-ptrain-cuda" --no-timing > "$O/memcheck-ptrain.log" 2>&1
  ts "memcheck test-ptrain-cuda rc=$? $(grep -E 'ERROR SUMMARY|LEAK SUMMARY' "$O/memcheck-ptrain.log" | tail -2 | tr '\n' ' ')"
  timeout 90 "$CS" --tool racecheck "$R/tests/cuda/test-ptrain-cuda" --no-timing > "$O/racecheck-ptrain.log" 2>&1
  ts "racecheck test-ptrain-cuda rc=$?, hazards in pinfer's kernels: $(grep -c 'Race reported between.* at k_' "$O/racecheck-ptrain.log") $(grep 'RACECHECK SUMMARY' "$O/racecheck-ptrain.log" | tail -1)"
fi
wait $GP
ts "pi-gen-model 7b rc=$? $(tail -1 "$O/gen.log")"
timeout $(( $(left) - 5 )) "$R/tools/pi-train-predictors" -m $M --random 4096 -c 512 --samples 4096 --device cuda -t 16 \
  --sidecar /dev/shm/m7t-cuda.pinfer.gguf > "$O/train-cuda.out" 2> "$O/train-cuda.err"
ts "pi-train-predictors --device cuda rc=$?"
{ grep -E "training on|tokens per layer|device" "$O/train-cuda.err" | head -5; grep "capture chunk" "$O/train-cuda.err" | tail -1
  grep -E "layer" "$O/train-cuda.err" | tail -3; tail -5 "$O/train-cuda.out"; } >> "$L"
rm -f $M /dev/shm/m7t-cuda.pinfer.gguf
cat "$L"
