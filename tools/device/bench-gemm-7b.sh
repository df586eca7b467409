#!/bin/bash
# Issue 15 on the GPU machine: batched products on the integer tensor cores (kernels/cuda/mmq.cu).
# Correctness first (test-cuda, test-backend-cuda), then pi-bench --cuda-kernels' table of batched
# products (each type beside the f16-tile path), then pinfer against llama.cpp's llama-bench built
# from source in the same call, on the same random 7B-shaped files (pi-gen-model with llama.cpp's
# tokenizer, Q4_0 and Q8_0; pi-gen-model writes no K-quants): pp512 and tg128 fully offloaded, runs alternated,
# pinfer's prompt in steps of 64 (the default [tune] batch) and of 512 tokens.
# usage: bench-gemm-7b.sh all [SECONDS] | types [SECONDS] | hybrid | val [SECONDS] | vshort | quick | verify | check | prompt REPS | serve (after prompt:
#   tools/device/bench-serve-7b.sh's fully offloaded rows with the same llama.cpp build)
# Staging (on the build machine): R=.devbench with a CUDA build's coordinator/{pi-bench,pi-coordinator},
# gpu-worker/, cpu-worker/, tools/{pi-gen-model,loadgen.py}, tests/cuda/{test-cuda,test-backend-cuda},
# lib/ (../shared/device/bundle-libs.sh), vocab.gguf, llama-srv.tar.xz (llama.cpp with examples/server
# and examples/llama-bench). Run from the source tree with OUT set; results in $OUT/bench.log.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/progress.txt" >> "$L"; }
LB=/tmp/ext/lcpp/build/bin/llama-bench

build_llama() {
  if [ ! -x $LB ] && ! pgrep -f "ninja -C build" >/dev/null; then
    mkdir -p /tmp/ext && tar -C /tmp/ext -xJf "$R/llama-srv.tar.xz"
    mkdir -p /tmp/ext/lcpp/pocs && : > /tmp/ext/lcpp/pocs/CMakeLists.txt # the tarball leaves pocs/ out
    ( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
      ninja -C build -j 12 llama-bench llama-server llama-quantize > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) \
      > /dev/null 2>&1 &
  fi
}

gen() { # gen TYPE: /dev/shm/g7-TYPE.gguf
  local m=/dev/shm/g7-$1.gguf
  if [ ! -s "$m" ]; then
    ts "gen $1"
    "$R/tools/pi-gen-model" --preset 7b --type "$1" --vocab-from "$R/vocab.gguf" "$m" >> "$L" 2>&1
    ts "gen $1 rc=$?"
  fi
}

# machine: the card, its driver and the host's CPU, first in the log
machine() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; } >> "$L" 2>&1
}

TESTS="test-cuda test-cuda-sparse test-backend-cuda"

# test_one NAME SECONDS FILE: one CUDA test program at most SECONDS, its output in $O/NAME.log; a line
# (exit status, counts, seconds) and its failures appended to FILE
test_one() {
  local s rc
  s=$(date +%s)
  timeout "$2" "$R/tests/cuda/$1" > "$O/$1.log" 2>&1; rc=$?
  { echo "$1 rc=$rc ok=$(grep -c '^ok' "$O/$1.log") notok=$(grep -c '^not ok' "$O/$1.log") $(( $(date +%s) - s )) s"
    grep -E '^not ok' "$O/$1.log" | head -20; } >> "$3"
}

# run_tests SECONDS: the CUDA test programs one after another, each at most SECONDS
run_tests() {
  local t
  for t in $TESTS; do test_one "$t" "$1" "$L"; done
}

# run_tests_par SECONDS: the same at once (one GPU, separate processes); waits for every background job
run_tests_par() {
  local t
  for t in $TESTS; do test_one "$t" "$1" "$O/tests-$t.txt" & done
  wait
  for t in $TESTS; do cat "$O/tests-$t.txt" >> "$L"; done
}

# peak_start / peak_end LABEL: the device's most memory in use while the commands between them ran, in MiB
# (nvidia-smi every 100 ms), appended to the log
peak_start() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/peak.txt 2>/dev/null &
  PEAK_PID=$!
}
peak_end() {
  kill "$PEAK_PID" 2>/dev/null; wait "$PEAK_PID" 2>/dev/null
  echo "peak device memory $1: $(sort -n /tmp/peak.txt | tail -1) MiB" >> "$L"
}

# pinfer_pp FILE REPS SECONDS: pi-bench pp512/tg128 fully offloaded at each [tune] batch of $PI_BATCHES
# (default 64 and 512; 512 is the default since session 11), each at most SECONDS
PI_BATCHES=${PI_BATCHES:-64 512}
pinfer_pp() {
  local b
  for b in $PI_BATCHES; do
    echo "== pinfer $(basename "$1") tune.batch=$b" >> "$L"
    timeout "$3" "$R/coordinator/pi-bench" -m "$1" -p 512 -n 128 -r "$2" --gpu-backend cuda --hot-fraction 1 \
        --set tune.batch=$b --run-dir /tmp/pirun -o md > /tmp/pb.out 2> /tmp/pb.err
    echo "rc=$?" >> "$L"; grep -E "^\|" /tmp/pb.out >> "$L"; grep -iE "error" /tmp/pb.err | head -3 >> "$L"
  done
}

# llama_pp FILE SECONDS: llama-bench pp512/tg128 with every layer on the GPU
llama_pp() {
  echo "== llama.cpp $(basename "$1")" >> "$L"
  timeout "$2" $LB -m "$1" -ngl 99 -p 512 -n 128 -r 3 -o md > /tmp/lb.out 2> /tmp/lb.err
  echo "rc=$?" >> "$L"; grep -E "^\|" /tmp/lb.out >> "$L"
}

# wait_llama SECONDS: until llama.cpp's background build has ended (at most SECONDS); its last line
wait_llama() {
  for _ in $(seq "$1"); do grep -q "build rc=" /tmp/lcpp-build.log 2>/dev/null && break; sleep 1; done
  tail -1 /tmp/lcpp-build.log >> "$L"
}

# kernel_table SECONDS ITERS: pi-bench --cuda-kernels, its batched-products table into the log
kernel_table() {
  timeout "$1" "$R/coordinator/pi-bench" --cuda-kernels --iters "$2" > "$O/kernels.log" 2>&1
  echo "kernels rc=$?" >> "$L"
  sed -n '/batched products/,/^$/p' "$O/kernels.log" >> "$L"
}

# memcheck SECONDS: compute-sanitizer's memcheck of test-cuda
memcheck() {
  timeout "$1" /usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 9 "$R/tests/cuda/test-cuda" \
      > /tmp/memcheck.log 2>&1
  echo "memcheck rc=$? (timeout $1 s)" >> "$L"; grep -E "ERROR SUMMARY|Invalid|not ok" /tmp/memcheck.log | head -10 >> "$L"
}

# serve_full REP: tools/device/bench-serve-7b.sh's fully offloaded rows on the Q4_0 file
serve_full() {
  gen q4_0
  ln -sf /dev/shm/g7-q4_0.gguf /dev/shm/serve7.gguf
  bash "$(dirname "$0")/bench-serve-7b.sh" only pinfer-full,llama-full "$1"
}

check() {
  machine
  build_llama
  run_tests 200
  grep -E "mmq|integer|matmul ([qQ][2-8]_[01kK])" "$O/test-cuda.log" | head -60 >> "$L"
  # memcheck of the same tests while the model file is written (CPU work)
  gen q4_0 &
  local gp=$!
  memcheck 180
  wait $gp
  kernel_table 200 20
  ts "check done"
}

prompt() {
  local reps=${1:-2}
  build_llama; gen q4_0; gen q8_0
  wait_llama 500
  ts "prompt runs"
  for rep in $(seq "$reps"); do
    for ty in q4_0 q8_0; do
      pinfer_pp /dev/shm/g7-$ty.gguf 3 200
      llama_pp /dev/shm/g7-$ty.gguf 200
    done
    ts "rep $rep done"
  done
}

# all SECONDS: everything that fits one call, most important first: the tests (the model files written
# meanwhile), the kernel table, pp512/tg128 against llama-bench once per type, the serving rows while
# at least 200 s are left, memcheck with what remains
all() {
  local budget=${1:-560}
  machine
  build_llama
  ( gen q4_0; gen q8_0 ) &
  local gp=$!
  run_tests 150
  grep -E "integer|mmq" "$O/test-cuda.log" | head -30 >> "$L"
  ts "tests done"
  wait $gp
  kernel_table 150 10
  ts "kernels done"
  prompt 1
  if [ $(( $(date +%s) - T0 )) -lt $(( budget - 200 )) ]; then
    serve_full 1
    ts "serve done"
  fi
  local left=$(( budget - ($(date +%s) - T0) - 15 ))
  [ $left -gt 30 ] && memcheck $left
  ts "all done"
}

# quick: the tests, the kernel table and the serving rows (no llama-bench, no memcheck)
quick() {
  machine
  build_llama
  gen q4_0 &
  local gp=$!
  run_tests 150
  kernel_table 100 10
  ts "kernels done"
  wait $gp
  serve_full 1
  ts "quick done"
}

# verify: the current tree's tests, memcheck of test-cuda (90 s at most), the kernel table and pinfer's
# own pp512/tg128 (no llama.cpp: for a call with little device time)
verify() {
  machine
  gen q4_0 &
  local gp=$!
  run_tests 100
  kernel_table 60 10
  wait $gp
  pinfer_pp /dev/shm/g7-q4_0.gguf 3 60
  memcheck 90
  ts "verify done"
}

# val SECONDS: a tree's first device run after kernel work: the three CUDA tests at once (the 7B Q4_0 file
# written and llama.cpp built meanwhile), the kernel table, pp512/tg128 of pinfer at [tune] batch 64 and
# 512 beside llama-bench on the Q4_0 file, then the serving rows while 150 s are left
val() {
  local budget=${1:-500}
  machine
  build_llama
  gen q4_0 &
  run_tests_par 240 # and the file's writing
  grep -E "seqs|sequences in one step|q5_k|Q5_K" "$O/test-backend-cuda.log" | head -12 >> "$L"
  ts "tests done"
  kernel_table 90 10
  ts "kernels done"
  wait_llama 300
  pinfer_pp /dev/shm/g7-q4_0.gguf 3 120
  llama_pp /dev/shm/g7-q4_0.gguf 120
  ts "prompt done"
  if [ $(( $(date +%s) - T0 )) -lt $(( budget - 150 )) ]; then
    serve_full 1
    ts "serve done"
  fi
  ts "val done"
}

# vshort: the three CUDA tests at once, then pinfer's pp512/tg128 at [tune] batch 64 and 512 (no llama.cpp:
# for a call with little device time)
vshort() {
  machine
  gen q4_0 &
  run_tests_par 200 # and the file's writing
  grep -E "attention_seqs|sequences in one step" "$O/test-cuda.log" "$O/test-backend-cuda.log" | head -8 >> "$L"
  ts "tests done"
  pinfer_pp /dev/shm/g7-q4_0.gguf 2 60
  ts "vshort done"
}

# quant FROM TYPE: llama.cpp's llama-quantize makes /dev/shm/g7-TYPE.gguf (q4_k_m, q5_k_m, q3_k_m) from the F16 file
quant() {
  local m=/dev/shm/g7-$2.gguf
  [ -s "$m" ] && return
  ts "quantize $2"
  /tmp/ext/lcpp/build/bin/llama-quantize "/dev/shm/g7-$1.gguf" "$m" "${2^^}" 16 > "$O/quantize-$2.log" 2>&1
  ts "quantize $2 rc=$? $(du -m "$m" | cut -f1) MiB"
}

# hybrid_rows: the Q4_0 file at half offload: pinfer at hot fraction 0.5 with prompt streaming off and on
# (the backend's measured copy and packing rates from its info line), llama.cpp -ngl 16; peak device memory
hybrid_rows() {
  local ps
  for ps in off on; do
    echo "== hybrid q4_0: pinfer hot 0.5 prompt_stream=$ps" >> "$L"
    peak_start
    timeout 100 "$R/coordinator/pi-bench" -m /dev/shm/g7-q4_0.gguf -p 512 -n 32 -r 2 --gpu-backend cuda \
        --hot-fraction 0.5 --set tune.prompt_stream=$ps --log-level info --run-dir /tmp/pirun -o md > /tmp/pb.out 2> /tmp/pb.err
    echo "rc=$?" >> "$L"; grep -E "^\|" /tmp/pb.out >> "$L"
    grep -iE "error|prompt streaming|streamed|planned" /tmp/pb.err | head -6 >> "$L"
    peak_end "pinfer hybrid hot 0.5 prompt_stream=$ps"
  done
  echo "== hybrid q4_0: llama.cpp -ngl 16" >> "$L"
  peak_start
  timeout 100 $LB -m /dev/shm/g7-q4_0.gguf -ngl 16 -p 512 -n 32 -r 2 -o md > /tmp/lb.out 2> /tmp/lb.err
  echo "rc=$?" >> "$L"; grep -E "^\|" /tmp/lb.out >> "$L"
  peak_end "llama.cpp -ngl 16"
  ts "hybrid done"
}

# types SECONDS: issue 15's bars per file type: the three CUDA test programs at once (the F16 and Q4_0
# files written and llama.cpp built meanwhile), then Q4_K_M, Q5_K_M and Q3_K_M made by llama-quantize;
# for Q4_0, Q4_K_M, Q5_K_M, Q8_0 and Q3_K_M, pinfer's pp512/tg128 fully offloaded (batch 512) beside
# llama-bench -ngl 99, each run's peak device memory logged; then the hybrid Q4_0 rows (hybrid_rows)
# while time is left
types() {
  local budget=${1:-560} ty
  PI_BATCHES=512
  machine
  build_llama
  ( gen f16; gen q4_0; gen q8_0 ) &
  local gp=$!
  run_tests_par 200
  ts "tests done"
  wait $gp
  wait_llama 400
  for ty in q4_k_m q5_k_m; do quant f16 "$ty"; done
  for ty in q4_0 q4_k_m q5_k_m; do
    peak_start; pinfer_pp /dev/shm/g7-$ty.gguf 3 90; peak_end "pinfer $ty"
    peak_start; llama_pp /dev/shm/g7-$ty.gguf 90; peak_end "llama.cpp $ty"
    ts "$ty done"
  done
  if [ $(( $(date +%s) - T0 )) -lt $(( budget - 150 )) ]; then
    hybrid_rows
  fi
  if [ $(( $(date +%s) - T0 )) -lt $(( budget - 100 )) ]; then
    quant f16 q3_k_m
    for ty in q3_k_m q8_0; do
      peak_start; pinfer_pp /dev/shm/g7-$ty.gguf 2 60; peak_end "pinfer $ty"
      peak_start; llama_pp /dev/shm/g7-$ty.gguf 60; peak_end "llama.cpp $ty"
    done
  fi
  ts "types done"
}

case ${1:-} in
hybrid) hybrid_rows ;;
types) types "${2:-560}" ;;
val) val "${2:-500}" ;;
vshort) vshort ;;
verify) verify ;;
quick) quick ;;
all) all "${2:-560}" ;;
check) check ;;
prompt) prompt "${2:-2}" ;;
serve) serve_full "${2:-1}" ;;
*) echo "usage: $0 all [SECONDS] | types [SECONDS] | hybrid | val [SECONDS] | vshort | quick | verify | check | prompt REPS | serve [REP]" >&2; exit 2 ;;
esac
