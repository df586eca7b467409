#!/bin/bash
# tools/gpu-ab.sh - the GPU machine's A/B decode benchmark: two builds of tests/test-backend-cuda (a
# baseline and the tree under test) alternated in one call on the 7B-class and 1B-class generated
# models, in-process at hot fraction 1 (PI_CUDA_BENCH: a 64-token prompt batch, then 128 decode steps),
# then Nsight Compute's per-kernel times of the tree under test over a 3-token 7B-class decode.
# Timings are only comparable within one call (doc/cuda-backend.md, "Session 3").
#
# Prepare as for tools/gpu-check.sh (its header), and copy the baseline's test-backend-cuda (e.g. built
# from the previous commit) to $R/base/. Then, on the GPU machine:
#   R=$PWD/.devrun OUT=/some/dir [VARIANTS="cuda_matvec=auto;cuda_matvec=f32"] [NCU=0] tools/gpu-ab.sh
# VARIANTS are tunings of the backend's fields (test-backend-cuda's PI_CUDA_BENCH_VARIANTS: the [tune]
# keys of pinfer.conf(5) as KEY=VALUE, plus its test-only cuda_matvec=q8, cuda_pdl=0, cuda_att_dec=0),
# one run each, each over the defaults; "default" is the defaults. A baseline built before the tuning
# table read environment variables instead, so give it only "default".
set -u
cd "$(dirname "$0")/.."
R=${R:-$PWD/.devrun}
OUT=${OUT:-/tmp/gpu-ab}
V=${VARIANTS:-default}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$R/lib PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
[ -x "$R/base/test-backend-cuda" ] || { echo "gpu-ab: no baseline at $R/base/test-backend-cuda" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 120 $R/tools/pi-gen-model --embd 4096 --ff 11008 --layers 32 --heads 32 --kv-heads 32 --vocab 32000 \
  --act relu /tmp/m7b.gguf > /dev/null 2>&1 || { echo "gpu-ab: 7B-class model not generated" >&2; exit 1; }
timeout 90 $R/tools/pi-gen-model --preset 1b --act relu /tmp/m1b.gguf > /dev/null 2>&1 || { echo "gpu-ab: 1B-class model not generated" >&2; exit 1; }
bench() { # model binary variants (";"-separated; "default": the defaults)
  local v=$3; [ "$v" = default ] && v=""
  PI_CUDA_BENCH=1 PI_CUDA_BENCH_MODEL=/tmp/m$1.gguf PI_CUDA_BENCH_CONFIGS=cuda:1 PI_CUDA_BENCH_DECODE=128 \
    PI_CUDA_BENCH_VARIANTS="$v" timeout 240 "$2" 2>&1 | grep "tok/s" |
    sed -E "s|^# bench cuda backend, hot 1.0, 8 CPU threads for the cold neurons|$1 $(basename "$(dirname "$2")")|"
}
# The first run of a process includes CUDA's lazy module loading in its prompt figure: each process
# runs its variants twice, and base runs before and after the tree under test.
for m in 7b 1b; do
  bench $m $R/base/test-backend-cuda "default;default"
  bench $m $R/tests/test-backend-cuda "$V;$V"
  bench $m $R/base/test-backend-cuda "default"
done | tee "$OUT/ab.log"
if [ "${NCU:-1}" = 1 ]; then
  N=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
  PI_CUDA_BENCH=1 PI_CUDA_BENCH_MODEL=/tmp/m7b.gguf PI_CUDA_BENCH_CONFIGS=cuda:1 PI_CUDA_BENCH_DECODE=3 \
    timeout 300 $N --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread \
    --print-summary per-kernel $R/tests/test-backend-cuda > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? (per-kernel summary in $OUT/ncu.txt)"
fi
