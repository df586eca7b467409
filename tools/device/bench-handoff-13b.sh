#!/bin/bash
# Issue 17 on the GPU machine: the hybrid's per-layer hand-off, before and after, in one call.
# The 13B-shaped model of bench-sparse-13b.sh (same generator flags and seed: the same bytes) at
# --vram-budget 4G with --sparsity safe, decoded by two builds of pinfer alternately: the base build
# ($R/base: the tree before the change) and the new one ($R), the new one at several
# [tune] worker_spin_us; llama.cpp at -ngl 25 (its largest -ngl under pinfer's peak, session 14) in the
# same rounds; then CPU only. While the models are written, the sparse CUDA kernels run under
# compute-sanitizer (racecheck and memcheck, as tools/gpu-check.sh does).
#
# usage: bench-handoff-13b.sh [SECONDS] [SPINS]   (default 570 and "1000 100": round 2 runs the first spin only)
# Staging: as bench-sparse-13b.sh (a folder R with the new build's coordinator/{pi-bench,pi-coordinator},
# gpu-worker/, cpu-worker/, compute/pinfer-cuda.so, tools/{pi-gen-model,pi-profile},
# tests/cuda/{test-cuda-sparse,test-backend-cuda}, lib/, llama.tar.xz) plus R/base/ with the base build's
# coordinator/, gpu-worker/, cpu-worker/ and compute/pinfer-cuda.so; one .devbench/bundle.tar.xz:
#   mkdir -p /tmp/R && tar -C /tmp/R -xJf .devbench/bundle.tar.xz && R=/tmp/R OUT=... bash tools/device/bench-handoff-13b.sh
# SAN=0 skips the sanitizers; LL=0 skips llama.cpp (its build and file); PT=N profiles N tokens (1024). Results in $OUT/bench.log. Each pinfer run's log gives the GPU worker's mean exchange round trip
# ("exchange: ... mean") and the CPU worker's time from the publish seen to its partial posted
# ("masked one-token steps, mean"): their difference is the hand-off's own latency.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib PI_SRCDIR=$PWD PI_BUILDDIR=$R
BUDGET=${1:-570}
SPINS=${2:-1000 100}
T0=$(date +%s)
ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/progress.txt" >> "$L"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; free -g | head -2; } >> "$L" 2>&1

LB=/tmp/ext/lcpp/build/bin/llama-bench
mkdir -p /tmp/ext
BPID=""
if [ "${LL:-1}" = 1 ] && [ ! -x $LB ]; then
  [ -d /tmp/ext/lcpp ] || tar -C /tmp/ext -xJf "$R/llama.tar.xz"
  ( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
    ninja -C build -j 14 llama-bench > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) &
  BPID=$!
fi

# the sparse kernels under compute-sanitizer while the CPU writes the models (the GPU is idle then)
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
[ "${SAN:-1}" = 1 ] && ( s=$(date +%s)
  timeout 60 "$R/tests/cuda/test-cuda-sparse" > "$O/test-cuda-sparse.log" 2>&1
  echo "test-cuda-sparse rc=$? ok=$(grep -c '^ok' "$O/test-cuda-sparse.log") notok=$(grep -c '^not ok' "$O/test-cuda-sparse.log")"
  grep '^not ok' "$O/test-cuda-sparse.log" | head -5
  timeout 110 "$CS" --tool racecheck "$R/tests/cuda/test-cuda-sparse" --no-timing > "$O/racecheck-sparse.log" 2>&1
  echo "racecheck test-cuda-sparse rc=$?, hazards in pinfer's kernels: $(grep -c 'Race reported between.* at k_' "$O/racecheck-sparse.log")"
  grep "RACECHECK SUMMARY" "$O/racecheck-sparse.log" | tail -1
  timeout 110 "$CS" --tool memcheck --leak-check full --error-exitcode 9 "$R/tests/cuda/test-cuda-sparse" --no-timing > "$O/memcheck-sparse.log" 2>&1
  echo "memcheck test-cuda-sparse rc=$?"; grep -E "ERROR SUMMARY|LEAK SUMMARY" "$O/memcheck-sparse.log" | tail -2
  PI_CUDA_TEST=short-sparse timeout 90 "$CS" --tool memcheck --error-exitcode 9 "$R/tests/cuda/test-backend-cuda" \
    > "$O/memcheck-backend-sparse.log" 2>&1
  echo "memcheck backend sparse rc=$?"; grep "ERROR SUMMARY" "$O/memcheck-backend-sparse.log" | tail -1
  echo "sanitizers took $(( $(date +%s) - s )) s" ) > /tmp/san.txt 2>&1 &
SPID=$!; [ "${SAN:-1}" = 1 ] || SPID=""

# SMOKE=1: the same flow on a 1B-shaped model with the host backend, 2 threads (a check of this
# script on a machine without a GPU: its figures mean nothing)
SMOKE=${SMOKE:-0}; PRESET=13b; BE=cuda; TH=15; TC=16; VB="--vram-budget 4G"; D=/dev/shm
[ "$SMOKE" = 1 ] && { PRESET=1b; BE=host; TH=1; TC=2; VB="--hot-fraction 0.3"; D=/tmp; }
M=$D/m13.gguf; MP=$D/m13p.gguf
gen() { # gen OUT [FLAGS...]: one model, written to a temporary name first
  local out=$1; shift
  [ -s "$out" ] && return 0
  "$R/tools/pi-gen-model" --preset $PRESET --type q4_0 --locality --gate-rank 16 --vocab-from "$PWD/tests/data/ggml-vocab-llama-spm.gguf" "$@" "$out.tmp" \
      > "/tmp/gen-$(basename "$out").log" 2>&1 && mv "$out.tmp" "$out"
}
ts "gen start"
G1=""; [ "${LL:-1}" = 1 ] && { gen $M & G1=$!; }
gen $MP --pred-exact & G2=$!
wait $G1 $G2
ts "gen done: $(ls -la $M $MP 2>&1 | awk '{print $5, $9}' | tr '\n' ' ')"
if [ ! -s $D/m13p.pinfer.gguf ]; then
  "$R/tools/pi-profile" -m $MP --random ${PT:-1024} -c 512 -t $(( TC < 12 ? TC : 12 )) > /tmp/profile.log 2>&1
  ts "profile rc=$?"; tail -2 /tmp/profile.log >> "$L"
fi
wait $BPID $SPID
cat /tmp/san.txt >> "$L"; tail -1 /tmp/lcpp-build.log >> "$L" 2>/dev/null
ts "builds and sanitizers done"

poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.1; done; }
# measured NAME SECONDS CMD...: CMD with the VRAM poll, at most SECONDS (skipped when fewer than
# SECONDS + 10 s are left); its table rows, its placement, sparsity and hand-off lines into the log.
measured() {
  local name=$1 secs=$2; shift 2
  if [ "$(left)" -lt $(( secs + 10 )) ]; then echo "== $name: skipped ($(left) s left)" >> "$L"; return; fi
  poll > /tmp/poll-$name.txt 2>/dev/null & local pp=$!
  echo "== $name: $*" >> "$L"
  local s=$(date +%s)
  timeout "$secs" "$@" > /tmp/$name.out 2> /tmp/$name.err; local rc=$?
  kill $pp; wait $pp 2>/dev/null
  grep -E "^\|" /tmp/$name.out >> "$L"
  grep -hE "sparsity|exchange:|masked one-token|idle spin|error" /tmp/$name.out /tmp/$name.err | cut -c1-240 | head -12 >> "$L"
  echo "$name rc=$rc peak_mib=$(sort -n /tmp/poll-$name.txt | tail -1) $(( $(date +%s) - s )) s" >> "$L"
}
# pinfer's hybrid decode at 4G with its predictors (safe); the build is the program's directory
PB="-m $MP -p 0 -n 64 -r 3 --gpu-backend $BE --cpu-workers 1 -t $TH --run-dir /tmp/pirun -o md --log-level info $VB --sparsity safe"
PC="-m $MP -p 0 -n 32 -r 2 --gpu-backend none -t $TC -o md --sparsity safe"
# in the order of what matters most, so that a short budget skips the least (measured skips what does
# not fit): round 1 with every spin, the CPU alone (the two builds alternated), then round 2
round() { # round N SPIN...
  local r=$1; shift
  measured base-r$r 50 "$R/base/coordinator/pi-bench" $PB
  for sp in "$@"; do measured new-spin$sp-r$r 50 "$R/coordinator/pi-bench" $PB --set tune.worker_spin_us=$sp; done
  [ "${LL:-1}" = 1 ] && measured ll-ngl25-r$r 80 $LB -m $M -ngl 25 -t 16 -p 0 -n 64 -r 3 -o md
  ts "round $r done"
}
round 1 $SPINS
for r in 1 2; do # the CPU alone, 16 threads
  measured base-cpu-r$r 30 "$R/base/coordinator/pi-bench" $PC
  measured new-cpu-r$r 30 "$R/coordinator/pi-bench" $PC
done
[ "${LL:-1}" = 1 ] && measured ll-cpu 80 $LB -m $M -ngl 0 -t 16 -p 0 -n 32 -r 2 -o md
round 2 ${SPINS%% *}
ts "all done"
