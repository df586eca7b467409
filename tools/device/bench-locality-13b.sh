#!/bin/bash
# Issue 16's benchmark: a 13B-shaped --locality Q4_0 model, pinfer's solver placement at VRAM budgets
# of 4 and 6 GiB against llama.cpp -ngl at the same peak VRAM (nvidia-smi), same call.
# Staging (on the build machine; see tools/gpu-check.sh's header for the binaries): R=.devbench with
# coordinator/{pi-bench,pi-coordinator,pi-perplexity}, gpu-worker/, cpu-worker/, tools/{pi-gen-model,
# pi-profile,pi-place,pi-train-predictors}, tests/{cuda,integration}/ as the script runs them, lib/ from
# ../shared/device/bundle-libs.sh, vocab.gguf (../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf) and
# llama.tar.xz (llama.cpp's sources as ../shared/device/anchors.md archives them, plus an empty
# pocs/CMakeLists.txt, which the top-level CMakeLists.txt adds with the examples). Run there from the
# source tree: `bash tools/device/SCRIPT` with OUT set; results in $OUT/bench.log and vram.txt.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p $O
export LD_LIBRARY_PATH=$R/lib
L=$O/bench.log
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; free -g | head -2; } > $L 2>&1
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $O/progress.txt; }
mkdir -p /tmp/ext && tar -C /tmp/ext -xJf $R/llama.tar.xz
( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
  ninja -C build -j 12 llama-bench > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) &
BP=$!
M=/dev/shm/m13.gguf
if [ -s /dev/shm/m13.pinfer.gguf ]; then ts "model and profile kept from the last call"; else
ts "gen start"
$R/tools/pi-gen-model --preset 13b --type q4_0 --locality --vocab-from $R/vocab.gguf $M >> $L 2>&1
ts "gen done rc=$? $(ls -la $M | awk '{print $5}') bytes"
$R/tools/pi-profile -m $M --random 1024 -c 512 -t 8 > /tmp/profile.log 2>&1
ts "profile done rc=$?"; tail -4 /tmp/profile.log >> $L
fi
wait $BP; ts "$(tail -1 /tmp/lcpp-build.log)"; grep -m5 -i error /tmp/lcpp-build.log /tmp/lcpp-cmake.log >> $L
for b in 4G 6G; do echo "== pi-place $b" >> $L; $R/tools/pi-place -m $M --vram-budget $b --no-export -q >> $L 2>&1; done
poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.1; done; }
# measured NAME CMD...: run with the VRAM poll; output into the log, the peak MiB into vram.txt
measured() {
  local name=$1; shift
  poll > /tmp/poll-$name.txt 2>/dev/null & local pp=$!
  echo "== $name: $*" >> $L
  timeout 150 "$@" > /tmp/$name.out 2> /tmp/$name.err; local rc=$?
  kill $pp; wait $pp 2>/dev/null
  grep -E "^\|" /tmp/$name.out >> $L; grep -E "placement|exchange:|error" /tmp/$name.err | cut -c1-400 >> $L
  echo "$name rc=$rc peak_mib=$(sort -n /tmp/poll-$name.txt | tail -1)" | tee -a $O/vram.txt >> $L
}
LB=/tmp/ext/lcpp/build/bin/llama-bench
PB="$R/coordinator/pi-bench -m $M -p 0 -n 64 -r 3 --gpu-backend cuda --cpu-workers 1 --run-dir /tmp/pirun -o md --log-level info"
measured pi4G-t15 $PB --vram-budget 4G -t 15
for ngl in 20 22 24 26; do measured ll-ngl$ngl $LB -m $M -ngl $ngl -t 16 -p 0 -n 64 -r 3 -o md; done
measured pi6G-t15 $PB --vram-budget 6G -t 15
for ngl in 32 34 36 38; do measured ll-ngl$ngl $LB -m $M -ngl $ngl -t 16 -p 0 -n 64 -r 3 -o md; done
ts "main runs done"
measured pi4G-t15-b $PB --vram-budget 4G -t 15
mv /dev/shm/m13.pinfer.gguf /dev/shm/m13.side
measured pi4G-t15-prefix $PB --vram-budget 4G -t 15
mv /dev/shm/m13.side /dev/shm/m13.pinfer.gguf
measured ll-ngl0 $LB -m $M -ngl 0 -t 16 -p 0 -n 32 -r 2 -o md
ts "all done"
