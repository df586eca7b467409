#!/bin/bash
# Issue 17 on the GPU machine: decode of a 13B-shaped ReLU model with predictors, pinfer (dense and
# `--sparsity safe`) against llama.cpp at the same peak VRAM and PowerInfer on the same weights and
# budget, all in one call; then the same on the CPU alone.
#
# The weights: `pi-gen-model --preset 13b --type q4_0 --locality --gate-rank 16` (doc/locality.md),
# written three times from one seed, so the tensors are the same bytes: plain for llama.cpp (it
# refuses extra tensors), plus `--pred-exact` predictors for pinfer (rank 33, made from the gate's
# factors: both sparse engines get the same, exact predictors), and `--pred-exact --powerinfer`
# (PowerInfer's PWRI layout: ffn_down_t in place of ffn_down) for PowerInfer. pinfer's file is profiled
# (pi-profile, random tokens) and `pi-place` at the same budget writes PowerInfer's GPU index from that
# profile, so both sparse engines put the same kind of neurons on the device.
#
# usage: bench-sparse-13b.sh [SECONDS]   (default 560: the runs that do not fit are left for a second
# call, which finds the models, the profile and the builds in /dev/shm and /tmp/ext of a warm machine)
# Staging (on the build machine): a folder R with a CUDA build's coordinator/{pi-bench,pi-coordinator},
# gpu-worker/, cpu-worker/, compute/pinfer-cuda.so, tools/{pi-gen-model,pi-profile,pi-place},
# tests/cuda/{test-cuda-sparse,test-backend-cuda}, lib/ (../shared/device/bundle-libs.sh), llama.tar.xz
# (llama.cpp's sources as ../shared/device/anchors.md archives them) and pwi.tar.xz (PowerInfer's, same
# recipe), sent as one .devbench/bundle.tar.xz (the device's 64 MiB). Run from the source tree:
#   mkdir -p /tmp/R && tar -C /tmp/R -xJf .devbench/bundle.tar.xz && R=/tmp/R OUT=... bash tools/device/bench-sparse-13b.sh
# results in $OUT/bench.log, peaks in $OUT/vram.txt.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib
BUDGET=${1:-560}
T0=$(date +%s)
ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/progress.txt" >> "$L"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; free -g | head -2; } >> "$L" 2>&1

LB=/tmp/ext/lcpp/build/bin/llama-bench
PM=/tmp/ext/pwi/build/bin/main
mkdir -p /tmp/ext
BPIDS=""
if [ ! -x $LB ]; then
  [ -d /tmp/ext/lcpp ] || tar -C /tmp/ext -xJf "$R/llama.tar.xz"
  ( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
    ninja -C build -j 9 llama-bench > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) &
  BPIDS="$BPIDS $!"
fi
if [ ! -x $PM ]; then
  [ -d /tmp/ext/pwi ] || tar -C /tmp/ext -xJf "$R/pwi.tar.xz"
  ( cd /tmp/ext/pwi && cmake -B build -G Ninja -DLLAMA_CUBLAS=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
      -DCMAKE_BUILD_TYPE=Release > /tmp/pwi-cmake.log 2>&1 &&
    ninja -C build -j 4 main > /tmp/pwi-build.log 2>&1; echo "PowerInfer build rc=$?" >> /tmp/pwi-build.log ) &
  BPIDS="$BPIDS $!"
fi

# the CUDA tests of the sparse path first, while the CPU builds and writes models (first call only)
TP=""
if [ ! -s /tmp/tests.txt ]; then
  ( export PI_SRCDIR=$PWD PI_BUILDDIR=$R
    for t in test-cuda-sparse test-backend-cuda; do
      s=$(date +%s); timeout 300 "$R/tests/cuda/$t" > "$O/$t.log" 2>&1; rc=$?
      echo "$t rc=$rc ok=$(grep -c '^ok' "$O/$t.log") notok=$(grep -c '^not ok' "$O/$t.log") $(( $(date +%s) - s )) s"
      grep '^not ok' "$O/$t.log" | head -10
    done > /tmp/tests.txt 2>&1 ) &
  TP=$!
fi

M=/dev/shm/m13.gguf; MP=/dev/shm/m13p.gguf; MW=/dev/shm/m13.powerinfer.gguf
gen() { # gen OUT [FLAGS...]: one model, written to a temporary name first
  local out=$1; shift
  [ -s "$out" ] && return 0
  "$R/tools/pi-gen-model" --preset 13b --type q4_0 --locality --gate-rank 16 --vocab-from "$PWD/tests/data/ggml-vocab-llama-spm.gguf" "$@" "$out.tmp" \
      > "/tmp/gen-$(basename "$out").log" 2>&1 && mv "$out.tmp" "$out"
}
GPIDS=""
ts "gen start"
gen $M & GPIDS="$GPIDS $!"
gen $MP --pred-exact & GPIDS="$GPIDS $!"
gen $MW --pred-exact --powerinfer & GPIDS="$GPIDS $!"
wait $GPIDS
ts "gen done: $(ls -la $M $MP $MW 2>&1 | awk '{print $5, $9}' | tr '\n' ' ')"
if [ ! -s /dev/shm/m13p.pinfer.gguf ]; then
  "$R/tools/pi-profile" -m $MP --random 1024 -c 512 -t 12 > /tmp/profile.log 2>&1
  ts "profile rc=$?"; tail -3 /tmp/profile.log >> "$L"
fi
if [ ! -s $MW.generated.gpuidx ]; then
  # pi-place's budget counts pinfer's device bytes: every layer's attention, the output head and the KV
  # caches of [server] slots at 512 positions (4.69 GB with no hot neuron); 5900M leaves about 1.1 GB of
  # hot neurons, which with PowerInfer's own 3.9 GB at --vram-budget 4 (attention, KV, scratch) comes to
  # pinfer's peak at 4G (4981 MiB); the file's capacity, the hot bytes, fits what that budget leaves it
  "$R/tools/pi-place" -m $MP --vram-budget 5900M --ctx 512 -q -o $MW.generated.gpuidx >> "$L" 2>&1
  ts "pi-place rc=$?"
fi
wait $BPIDS $TP
cat /tmp/tests.txt >> "$L"
tail -1 /tmp/lcpp-build.log >> "$L" 2>/dev/null; tail -1 /tmp/pwi-build.log >> "$L" 2>/dev/null
ts "builds done"

poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.1; done; }
# measured NAME SECONDS CMD...: CMD with the VRAM poll, at most SECONDS; its table rows, its sparsity,
# placement and timing lines into the log, its peak MiB into vram.txt. Skipped when fewer than
# SECONDS + 10 s are left of the budget.
measured() {
  local name=$1 secs=$2; shift 2
  if [ "$(left)" -lt $(( secs + 10 )) ]; then echo "== $name: skipped ($(left) s left)" >> "$L"; return; fi
  poll > /tmp/poll-$name.txt 2>/dev/null & local pp=$!
  echo "== $name: $*" >> "$L"
  timeout "$secs" "$@" > /tmp/$name.out 2> /tmp/$name.err; local rc=$?
  kill $pp; wait $pp 2>/dev/null
  grep -E "^\|" /tmp/$name.out >> "$L"
  grep -hE "placement|sparsity|exchange:|error|eval time|offloaded|gpu split|VRAM|split" /tmp/$name.out /tmp/$name.err | cut -c1-300 | head -20 >> "$L"
  echo "$name rc=$rc peak_mib=$(sort -n /tmp/poll-$name.txt | tail -1)" | tee -a "$O/vram.txt" >> "$L"
}
PB="$R/coordinator/pi-bench -m $MP -p 0 -n 64 -r 3 --gpu-backend cuda --cpu-workers 1 -t 15 --run-dir /tmp/pirun -o md --log-level info"
pw() { # pw NAME VRAM_GIB [N]: PowerInfer's main, decode timing from its own report
  measured "$1" 150 bash -c "$PM -m $MW -t 16 -n ${3:-64} -p 'Once upon a time' --ignore-eos --seed 1 --vram-budget $2"
}
for round in 1 2; do
  measured pi4G-r$round 200 $PB --vram-budget 4G --sparsity off,safe
  measured ll-ngl24-r$round 90 $LB -m $M -ngl 24 -t 16 -p 0 -n 64 -r 3 -o md
  measured ll-ngl26-r$round 90 $LB -m $M -ngl 26 -t 16 -p 0 -n 64 -r 3 -o md
  pw pw4G-r$round 4
  ts "round $round done"
done
# the CPU alone: 16 threads, no device memory
measured pi-cpu 200 "$R/coordinator/pi-bench" -m $MP -p 0 -n 32 -r 2 --gpu-backend none -t 16 -o md --sparsity off,safe
measured ll-cpu 90 $LB -m $M -ngl 0 -t 16 -p 0 -n 32 -r 2 -o md
pw pw-cpu 0 32
# the predictors' recall on this model (every 4th step checked against the true gates)
measured pi-recall 120 "$R/coordinator/pi-bench" -m $MP -p 0 -n 16 -r 1 --gpu-backend none -t 16 -o md --sparsity safe \
    --set sparsity.recall_every=4
ts "all done"
