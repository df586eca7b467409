#!/bin/bash
# Issue 17 on the GPU machine: the sparse CUDA tests, then a 7B-shaped --locality --gate-rank Q4_0
# model with predictors trained there, pinfer dense and safe at VRAM budgets of 2 and 3 GiB
# against llama.cpp -ngl at the same peak VRAM (nvidia-smi), same call.
# Staging (on the build machine; see tools/gpu-check.sh's header for the binaries): R=.devbench with
# coordinator/{pi-bench,pi-coordinator,pi-perplexity}, gpu-worker/, cpu-worker/, tools/{pi-gen-model,
# pi-profile,pi-place,pi-train-predictors}, tests/{cuda,integration}/ as the script runs them, lib/ from
# ../shared/device/bundle-libs.sh, vocab.gguf (../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf) and
# llama.tar.xz (llama.cpp's sources as ../shared/device/anchors.md archives them, plus an empty
# pocs/CMakeLists.txt, which the top-level CMakeLists.txt adds with the examples). Run there from the
# source tree: `bash tools/device/SCRIPT` with OUT set; results in $OUT/bench.log and vram.txt.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p $O; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; } > $L 2>&1
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress.txt >> $L; }
mkdir -p /tmp/ext && tar -C /tmp/ext -xJf $R/llama.tar.xz
( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
  ninja -C build -j 10 llama-bench > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) &
BP=$!
( for t in cuda/test-cuda-sparse cuda/test-backend-cuda integration/test-pipeline-sparse; do
    n=${t##*/}; s=$(date +%s)
    timeout 240 $R/tests/$t > /tmp/$n.log 2>&1; rc=$?
    echo "$n rc=$rc ok=$(grep -c '^ok' /tmp/$n.log) notok=$(grep -c '^not ok' /tmp/$n.log) skip=$(grep -c SKIP /tmp/$n.log) $(( $(date +%s) - s )) s"
    grep -E '^not ok' /tmp/$n.log | head -8
  done > /tmp/tests.txt 2>&1 ) &
TP=$!
M=/dev/shm/m7.gguf
if [ ! -s /dev/shm/m7.pinfer.gguf ]; then
  ts "gen start"
  $R/tools/pi-gen-model --preset 7b --type q4_0 --locality --gate-rank 16 --vocab-from $R/vocab.gguf $M >> $L 2>&1
  ts "gen done rc=$?"
  wait $TP; wait $BP
  ts "tests and llama.cpp build done"
  $R/tools/pi-train-predictors -m $M --random 4096 -c 512 --samples 4096 --rank-min 64 --rank-max 64 --epochs 12 -t 16 \
      > /tmp/train.out 2> /tmp/train.err
  ts "train rc=$?"; cat /tmp/train.out >> $L; tail -2 /tmp/train.err >> $L
else
  wait $TP; wait $BP
fi
cat /tmp/tests.txt >> $L; tail -1 /tmp/lcpp-build.log >> $L
poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.1; done; }
measured() {
  local name=$1; shift
  poll > /tmp/poll-$name.txt 2>/dev/null & local pp=$!
  echo "== $name: $*" >> $L
  timeout 150 "$@" > /tmp/$name.out 2> /tmp/$name.err; local rc=$?
  kill $pp; wait $pp 2>/dev/null
  grep -E "^\|" /tmp/$name.out >> $L; grep -E "placement|sparsity|exchange:|error" /tmp/$name.err | cut -c1-300 >> $L
  echo "$name rc=$rc peak_mib=$(sort -n /tmp/poll-$name.txt | tail -1)" | tee -a $O/vram.txt >> $L
}
LB=/tmp/ext/lcpp/build/bin/llama-bench
PB="$R/coordinator/pi-bench -m $M -p 0 -n 64 -r 3 --gpu-backend cuda --cpu-workers 1 -t 15 --run-dir /tmp/pirun -o md --log-level info"
measured pi2G $PB --vram-budget 2G --sparsity off,safe
for ngl in 14 16 18; do measured ll-ngl$ngl $LB -m $M -ngl $ngl -t 16 -p 0 -n 64 -r 3 -o md; done
ts "2G done"
measured pi3G $PB --vram-budget 3G --sparsity off,safe
for ngl in 22 24 26; do measured ll-ngl$ngl $LB -m $M -ngl $ngl -t 16 -p 0 -n 64 -r 3 -o md; done
ts "3G done"
measured pi-cpu $R/coordinator/pi-bench -m $M -p 0 -n 16 -r 2 --gpu-backend none -t 16 -o md --sparsity safe
ts "all done"
