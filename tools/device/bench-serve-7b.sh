#!/bin/bash
# Issue 19 on the GPU machine: serving throughput and time to first token, pinfer's HTTP API against
# llama.cpp's llama-server built from source in the same call, on the same random 7B-shaped Q4_0 file
# (pi-gen-model with llama.cpp's tokenizer), 32 slots of 256 positions each on both (pinfer's pipeline
# takes batches of 64 tokens: 32 decode rows leave room for prompts):
#   full:   pinfer --gpu-backend cuda --hot-fraction 1      vs llama-server -ngl 99
#   hybrid: pinfer --gpu-backend cuda --hot-fraction 0.5    vs llama-server -ngl 16 (half the layers)
#           (one CPU worker of 15 threads; llama-server -t 16)
# For each, tools/device/loadgen.py at 1, 8, 32 and 64 concurrent clients (streamed /v1/completions,
# about 40 prompt tokens, 64 generated with ignore_eos, temperature 0), peak VRAM from nvidia-smi.
# usage: bench-serve-7b.sh prep | run PLACEMENT[,PLACEMENT] REP
#   prep: unpack and build llama-server (background) and write the model; run waits for the build.
# Staging: R=.devbench with the binaries (a CUDA build), lib/ (tools/device: bundle-libs.sh, libmicrohttpd
# included), vocab.gguf and llama-srv.tar.xz (llama.cpp with examples/server); OUT set by the device
# call: the table rows in $OUT/bench.log. A later call on the warm machine reuses model and build.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/progress.txt" >> "$L"; }
M=/dev/shm/serve7.gguf
LS=/tmp/ext/lcpp/build/bin/llama-server
SLOTS=32; CTX=256; NPRED=64
LG="python3 $R/tools/loadgen.py"

prep() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; } >> "$L" 2>&1
  if [ ! -x $LS ] && ! pgrep -f "ninja -C build" >/dev/null; then
    mkdir -p /tmp/ext && tar -C /tmp/ext -xJf "$R/llama-srv.tar.xz"
    mkdir -p /tmp/ext/lcpp/pocs && : > /tmp/ext/lcpp/pocs/CMakeLists.txt # the tarball leaves pocs/ out
    ( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
      ninja -C build -j 12 llama-server > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) \
      > /dev/null 2>&1 &
  fi
  if [ ! -s $M ]; then
    ts "gen start"
    "$R/tools/pi-gen-model" --preset 7b --type q4_0 --vocab-from "$R/vocab.gguf" $M >> "$L" 2>&1
    ts "gen done rc=$?"
  fi
}

poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done; }
# wait_http PORT PID: until /health answers 200 (at most 300 s, while PID lives)
wait_http() {
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health")" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
# serve NAME PORT CMD...: start a server, run the load at each concurrency, stop it
serve() {
  local name=$1 port=$2; shift 2
  poll > "/tmp/poll-$name.txt" 2>/dev/null & local pp=$!
  "$@" > "/tmp/$name.out" 2> "/tmp/$name.err" & local sp=$!
  if wait_http "$port" $sp; then
    for c in 1 8 32 64; do
      local r=$(( c == 1 ? 4 : c == 8 ? 2 : 1 ))
      timeout 240 $LG "$name" "127.0.0.1:$port" $c $r $NPRED 32 >> "$L" 2>&1
    done
  else
    echo "| $name | did not start |" >> "$L"; tail -5 "/tmp/$name.err" >> "$L"
  fi
  kill -TERM $sp; wait $sp 2>/dev/null
  kill $pp; wait $pp 2>/dev/null
  echo "# $name peak_vram_mib=$(sort -n "/tmp/poll-$name.txt" | tail -1)" >> "$L"
  grep -E "placement|error" "/tmp/$name.err" | head -5 | cut -c1-300 | sed 's/^/# /' >> "$L"
}

run() {
  local placements=$1 rep=$2
  for _ in $(seq 600); do grep -q "build rc=" /tmp/lcpp-build.log 2>/dev/null && break; sleep 1; done
  tail -1 /tmp/lcpp-build.log >> "$L" 2>/dev/null
  mkdir -p -m 700 /tmp/pirun
  echo "| server | concurrency | requests | tok/s | ttft p50 ms | ttft p99 ms | errors |" >> "$L"
  echo "|---|---|---|---|---|---|---|" >> "$L"
  local PI="$R/coordinator/pi-coordinator --model $M --ctx $CTX --slots $SLOTS --set server.queue=256 --run-dir /tmp/pirun --http 127.0.0.1:18080 --gpu-backend cuda --cpu-workers 1 --cpu-threads 15 --log-level warn"
  for p in ${placements//,/ }; do
    ts "$p rep $rep"
    if [ "$p" = full ]; then
      serve "pinfer-full-$rep" 18080 $PI --hot-fraction 1
      serve "llama-ngl99-$rep" 18081 $LS -m $M -ngl 99 -c $((SLOTS * CTX)) -np $SLOTS -t 16 --port 18081 --log-disable
    else
      serve "pinfer-hot0.5-$rep" 18080 $PI --hot-fraction 0.5
      serve "llama-ngl16-$rep" 18081 $LS -m $M -ngl 16 -c $((SLOTS * CTX)) -np $SLOTS -t 16 --port 18081 --log-disable
    fi
  done
  ts "done"
}

# run_only NAME[,NAME] REP: single servers (pinfer-full, llama-full, pinfer-hybrid, llama-hybrid)
run_only() {
  local names=$1 rep=$2
  for _ in $(seq 600); do grep -q "build rc=" /tmp/lcpp-build.log 2>/dev/null && break; sleep 1; done
  tail -1 /tmp/lcpp-build.log >> "$L" 2>/dev/null
  mkdir -p -m 700 /tmp/pirun
  local PI="$R/coordinator/pi-coordinator --model $M --ctx $CTX --slots $SLOTS --set server.queue=256 --run-dir /tmp/pirun --http 127.0.0.1:18080 --gpu-backend cuda --cpu-workers 1 --cpu-threads 15 --log-level warn"
  for x in ${names//,/ }; do
    ts "$x rep $rep"
    case $x in
    pinfer-full) serve "pinfer-full-$rep" 18080 $PI --hot-fraction 1 ;;
    llama-full) serve "llama-ngl99-$rep" 18081 $LS -m $M -ngl 99 -c $((SLOTS * CTX)) -np $SLOTS -t 16 --port 18081 --log-disable ;;
    pinfer-hybrid) serve "pinfer-hot0.5-$rep" 18080 $PI --hot-fraction 0.5 ;;
    llama-hybrid) serve "llama-ngl16-$rep" 18081 $LS -m $M -ngl 16 -c $((SLOTS * CTX)) -np $SLOTS -t 16 --port 18081 --log-disable ;;
    esac
  done
}

case ${1:-} in
prep) prep ;;
run) prep; run "${2:-full}" "${3:-1}" ;;
only) prep; run_only "${2:-pinfer-full}" "${3:-1}" ;;
*) echo "usage: $0 prep | run PLACEMENT[,PLACEMENT] REP" >&2; exit 2 ;;
esac
