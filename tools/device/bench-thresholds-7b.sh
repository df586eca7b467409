#!/bin/bash
# Issue 18 on the GPU machine: a random 7B-shaped SwiGLU Q4_0 model (pi-gen-model, llama.cpp's
# tokenizer), activation thresholds set by pi-profile for 40% (safe) and 50% (aggressive) of the FFN
# pairs (random weights say nothing about quality, only about speed), then decode tok/s:
#   - hybrid: pinfer --vram-budget 2G off/safe/aggressive (its GPU worker holds every layer's attention
#     and the output head, about 1.5 GiB, whatever the budget: 1.3G is refused) against llama.cpp
#     -ngl 13 and 15 (peak VRAM per run from nvidia-smi);
#   - CPU only: pinfer --gpu-backend none off/safe/aggressive against llama.cpp -ngl 0 (its CUDA build
#     decodes on the CPU at -ngl 0), 16 threads;
#   - with FULL=1 also fully offloaded: pinfer --hot-fraction 1 off/safe/aggressive (the thresholds of the
#     hot neurons on the device) against llama.cpp -ngl 99, two rounds.
# Staging: as tools/device/bench-sparse-7b.sh says (R=.devbench with the binaries, lib/, vocab.gguf,
# llama.tar.xz); run from the source tree with OUT set: results in $OUT/bench.log and $OUT/vram.txt.
# A second call on a warm machine reuses the model, the sidecar and llama.cpp's build.
# Knobs: PT=N profile tokens (2048); REPS=N rounds of the hybrid and fully offloaded rows (2); HYB=0 skips
# the hybrid rows, CPU=0 the CPU rows; TESTS=1 first runs the CUDA tests of the thresholds (test-cuda-sparse,
# test-backend-cuda's short-gated, test-ptrain-cuda) while the CPU writes the model (R/tests/cuda and
# R/fx with the tiny-llama fixtures staged as tools/gpu-check.sh says).
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p $O; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; } > $L 2>&1
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress.txt >> $L; }
LB=/tmp/ext/lcpp/build/bin/llama-bench
if [ ! -x $LB ]; then
  mkdir -p /tmp/ext && tar -C /tmp/ext -xJf $R/llama.tar.xz
  ( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
    ninja -C build -j 10 llama-bench > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) &
fi
BP=${!:-0}
TP=""
if [ "${TESTS:-0}" = 1 ]; then
  ( export PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
    for t in test-cuda-sparse "test-backend-cuda short-gated" test-ptrain-cuda; do
      set -- $t; n=$1; s=$(date +%s)
      PI_CUDA_TEST=${2:-} timeout 150 $R/tests/cuda/$n > $O/$n.log 2>&1
      echo "$n ${2:-} rc=$? ok=$(grep -c '^ok' $O/$n.log) notok=$(grep -c '^not ok' $O/$n.log) $(( $(date +%s) - s )) s"
      grep -E '^not ok' $O/$n.log | head -10
    done ) > /tmp/tests.txt 2>&1 &
  TP=$!
fi
M=/dev/shm/s7.gguf
if [ ! -s /dev/shm/s7.pinfer.gguf ]; then
  ts "gen start"
  $R/tools/pi-gen-model --preset 7b --type q4_0 --vocab-from $R/vocab.gguf $M >> $L 2>&1
  ts "gen done rc=$?"
  $R/tools/pi-profile -m $M --random ${PT:-2048} -c 512 -t 16 --threshold-sparsity 0.4,0.5 > /tmp/prof.out 2> /tmp/prof.err
  ts "profile rc=$?"; grep -E "^thresholds" /tmp/prof.out >> $L; tail -3 /tmp/prof.err >> $L
fi
[ "$BP" != 0 ] && wait $BP 2>/dev/null
[ -n "$TP" ] && { wait $TP; cat /tmp/tests.txt >> $L; ts "tests done"; }
tail -1 /tmp/lcpp-build.log >> $L 2>/dev/null
poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.1; done; }
measured() {
  local name=$1; shift
  poll > /tmp/poll-$name.txt 2>/dev/null & local pp=$!
  echo "== $name: $*" >> $L
  timeout 170 "$@" > /tmp/$name.out 2> /tmp/$name.err; local rc=$?
  kill $pp; wait $pp 2>/dev/null
  grep -E "^\|" /tmp/$name.out >> $L; grep -E "placement|sparsity|thresholds|error" /tmp/$name.err | cut -c1-300 >> $L
  echo "$name rc=$rc peak_mib=$(sort -n /tmp/poll-$name.txt | tail -1)" | tee -a $O/vram.txt >> $L
}
PB="$R/coordinator/pi-bench -m $M -p 0 -n 64 -r 3 --run-dir /tmp/pirun -o md --log-level info"
mkdir -p -m 700 /tmp/pirun
for rep in $(seq 1 ${REPS:-2}); do
  [ "${HYB:-1}" = 1 ] || break
  measured pi-hyb-$rep $PB --gpu-backend cuda --cpu-workers 1 -t 15 --vram-budget 2G --sparsity off,safe,aggressive
  for ngl in 13 15; do measured ll-ngl$ngl-$rep $LB -m $M -ngl $ngl -t 16 -p 0 -n 64 -r 3 -o md; done
  ts "hybrid rep $rep done"
done
if [ "${FULL:-0}" = 1 ]; then # fully offloaded: the hot neurons' thresholds on the device (doc/thresholds.md)
  for rep in $(seq 1 ${REPS:-2}); do
    measured pi-full-$rep $PB --gpu-backend cuda --hot-fraction 1 --cpu-workers 1 -t 15 --sparsity off,safe,aggressive
    measured ll-full-$rep $LB -m $M -ngl 99 -p 0 -n 64 -r 3 -o md
  done
  ts "fully offloaded done"
fi
[ "${CPU:-1}" = 1 ] && measured pi-cpu $PB --gpu-backend none -t 16 --sparsity off,safe,aggressive
[ "${CPU:-1}" = 1 ] && measured ll-cpu $LB -m $M -ngl 0 -t 16 -p 0 -n 64 -r 3 -o md
ts "cpu done"
