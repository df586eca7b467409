#!/bin/bash
# tools/gpu-ab.sh - the GPU machine's A/B decode benchmark: two builds' pi-bench (a baseline and the
# tree under test, each with its own workers) alternated in one call on the 7B-class and 1B-class
# generated models, the cuda backend at hot fraction 1 through the pipeline (pp64 and tg128, two
# repetitions, llama-bench's table), then Nsight Compute's per-kernel times of the tree under test's
# GPU worker over a 3-token 7B-class decode. Timings are only comparable within one call
# (doc/bench-log.md, "Session 3").
#
# Prepare as for tools/gpu-check.sh (its header; coordinator/pi-bench also under $R/coordinator), and
# copy the baseline's programs (e.g. built from the previous commit) to $R/base/coordinator/pi-bench,
# $R/base/gpu-worker/pi-gpu-worker and $R/base/cpu-worker/pi-cpu-worker. VARIANTS is a ";"-separated
# list of tunings for the tree under test, each a space-separated list of [tune] settings
# (pinfer.conf(5)) passed to pi-bench as --set KEY=VALUE ("default": none). A baseline built before
# the tuning table has no --set: give it only "default". Then, on the GPU machine:
#   R=$PWD/.devrun OUT=/some/dir [VARIANTS="tune.cuda_matvec=auto;tune.cuda_matvec=f32"] [NCU=0] tools/gpu-ab.sh
set -u
cd "$(dirname "$0")/.."
R=${R:-$PWD/.devrun}
OUT=${OUT:-/tmp/gpu-ab}
V=${VARIANTS:-default}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$R/lib PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
[ -x "$R/base/coordinator/pi-bench" ] || { echo "gpu-ab: no baseline at $R/base/coordinator/pi-bench" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 120 $R/tools/pi-gen-model --preset 7b --act relu /tmp/m7b.gguf > /dev/null 2>&1 || { echo "gpu-ab: 7B-class model not generated" >&2; exit 1; }
timeout 90 $R/tools/pi-gen-model --preset 1b --act relu /tmp/m1b.gguf > /dev/null 2>&1 || { echo "gpu-ab: 1B-class model not generated" >&2; exit 1; }
bench() { # model build-dir variants (";"-separated; "default": no --set)
  local IFS=';' v s
  for v in $3; do
    [ "$v" = default ] && v=""
    s=""; for kv in $(IFS=' '; echo $v); do s="$s --set $kv"; done
    echo "# $1, $(basename "$2"), ${v:-default}"
    (IFS=' '; timeout 300 "$2/coordinator/pi-bench" -m /tmp/m$1.gguf -p 64 -n 128 -r 2 -t 8 --gpu-backend cuda \
      --hot-fraction 1 --cpu-workers 1 --run-dir /tmp/pirun-ab $s 2>&1 | grep -E '^\| llama|rror')
  done
}
# The first run of a process includes CUDA's lazy module loading in its prompt figure: the warm-up
# run pi-bench makes before each test absorbs it; base still runs before and after the tree under test.
for m in 7b 1b; do
  bench $m $R/base default
  bench $m $R "$V"
  bench $m $R/base default
done | tee "$OUT/ab.log"
if [ "${NCU:-1}" = 1 ]; then
  N=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
  timeout 300 $N --target-processes all --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread \
    --print-summary per-kernel $R/coordinator/pi-bench -m /tmp/m7b.gguf -p 0 -n 3 -r 1 --no-warmup --gpu-backend cuda \
    --hot-fraction 1 --cpu-workers 1 --run-dir /tmp/pirun-ab > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? (per-kernel summary in $OUT/ncu.txt)"
fi
