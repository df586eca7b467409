#!/bin/bash
# tools/gpu-table.sh - the GPU machine's benchmark table of issue 7 in one call (markdown on stdout):
# prompt and decode tokens/s through the real engines (pi-bench, llama-bench's table: pp128 and tgN)
# of the demo model, the 1B-class and the 7B-class generated models, for the single process on the
# CPU, the host backend at hot fraction 1 and 0.5, and the cuda backend at 1 and 0.5 (one CPU worker);
# the cuda rows add the weight bytes a dense decode step streams per second (GB/s) and their share of
# the device's copy bandwidth, which pi-bench --cuda-kernels measures in the same call.
#
# Prepare as for tools/gpu-check.sh (its header; coordinator/pi-bench also under $R/coordinator), then:
#   R=$PWD/.devrun OUT=/some/dir [THREADS=16] [MODELS="demo 1b 7b"] [REPS=1] tools/gpu-table.sh
set -u
cd "$(dirname "$0")/.."
R=${R:-$PWD/.devrun}
OUT=${OUT:-/tmp/gpu-table}
T=${THREADS:-$(nproc)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$R/lib
B=$R/coordinator/pi-bench
[ -x "$B" ] || { echo "gpu-table: no $B" >&2; exit 2; }
M=${MODELS:-demo 1b 7b}
case " $M " in *" 1b "*)
  timeout 120 $R/tools/pi-gen-model --preset 1b --act relu /tmp/m1b.gguf > /dev/null 2>&1 || { echo "gpu-table: no 1B-class model" >&2; exit 1; } ;;
esac
case " $M " in *" 7b "*)
  timeout 180 $R/tools/pi-gen-model --preset 7b --act relu /tmp/m7b.gguf > /dev/null 2>&1 || { echo "gpu-table: no 7B-class model" >&2; exit 1; } ;;
esac
copy=$(timeout 300 "$B" --cuda-kernels --iters 5 2>&1 | tee "$OUT/cuda-kernels.txt" | sed -n 's/^copy kernel.*: \([0-9.]*\) GB\/s.*/\1/p' | head -1)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "copy bandwidth (pi-bench --cuda-kernels, read + written): ${copy:-?} GB/s; $T threads per process; $(nproc) CPUs"
for spec in "demo tests/data/demo-relu-q4_0.gguf 128" "1b /tmp/m1b.gguf 64" "7b /tmp/m7b.gguf 32"; do
  set -- $spec
  case " $M " in *" $1 "*) ;; *) continue ;; esac
  mod=$2 n=$3
  echo
  echo "$1 ($mod), pp128 and tg$n:"
  echo
  timeout 900 "$B" -m "$mod" -p 128 -n "$n" -r "${REPS:-1}" -t "$T" --run-dir /tmp/pirun-t --gpu-backend none,host \
    --hot-fraction 1,0.5 --cpu-workers 1 2>> "$OUT/run.log"
  echo
  timeout 900 "$B" -m "$mod" -p 128 -n "$n" -r "${REPS:-1}" -t "$T" --run-dir /tmp/pirun-t --gpu-backend cuda \
    --hot-fraction 1,0.5 --cpu-workers 1 ${copy:+--bw "$copy"} 2>> "$OUT/run.log"
done
