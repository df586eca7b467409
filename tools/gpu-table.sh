#!/bin/bash
# tools/gpu-table.sh - the GPU machine's benchmark table of issue 7 in one call (markdown on stdout):
# prompt and decode tokens/s through the pipeline (pi-coordinator one-shot runs: a 128-token prompt
# given as ids, then N tokens greedy) of the demo model, the 1B-class and the 7B-class generated
# models, for the single process on the CPU, the host backend at hot fraction 1 and 0.5, and the cuda
# backend at 1 and 0.5 (one CPU worker); then, for cuda at hot 1, the weight bytes a decode token
# streams (every tensor but the token embeddings, as stored) over the device's copy bandwidth measured
# by pi-bench-cuda in the same call.
#
# Prepare as for tools/gpu-check.sh (its header; pi-bench-cuda and pi-gguf also under $R/tools), then:
#   R=$PWD/.devrun OUT=/some/dir [THREADS=16] [MODELS="demo 1b 7b"] tools/gpu-table.sh
set -u
cd "$(dirname "$0")/.."
R=${R:-$PWD/.devrun}
OUT=${OUT:-/tmp/gpu-table}
T=${THREADS:-$(nproc)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$R/lib
ids=1; for i in $(seq 1 127); do ids="$ids,$(( (i * 37) % 8000 + 2 ))"; done
M=${MODELS:-demo 1b 7b}
case " $M " in *" 1b "*)
  timeout 120 $R/tools/pi-gen-model --preset 1b --act relu /tmp/m1b.gguf > /dev/null 2>&1 || { echo "gpu-table: no 1B-class model" >&2; exit 1; } ;;
esac
case " $M " in *" 7b "*)
  timeout 180 $R/tools/pi-gen-model --embd 4096 --ff 11008 --layers 32 --heads 32 --kv-heads 32 --vocab 32000 --act relu \
    /tmp/m7b.gguf > /dev/null 2>&1 || { echo "gpu-table: no 7B-class model" >&2; exit 1; } ;;
esac
copy=$([ -x $R/tools/pi-bench-cuda ] && timeout 300 $R/tools/pi-bench-cuda --reps 5 2>&1 | tee "$OUT/pi-bench-cuda.txt" | sed -n 's/^copy kernel.*: \([0-9.]*\) GB\/s.*/\1/p' | head -1)
# weight bytes per decode token: every tensor but token_embd (unless it is also the output head)
wbytes() {
  $R/tools/pi-gguf "$1" | awk '$2 ~ /^"/ { n = $2; b = $NF; tot += b; if (n == "\"token_embd.weight\"") e = b; if (n == "\"output.weight\"") o = 1 }
                             END { printf "%d\n", o ? tot - e : tot }'
}
one() { # model n args... -> "prompt decode roundtrip"
  local mod=$1 n=$2; shift 2
  local log="$OUT/run.log"
  timeout 600 $R/coordinator/pi-coordinator --model "$mod" --tokens "$ids" -n "$n" --temp 0 --log-level info \
    --run-dir /tmp/pirun-t --cpu-threads "$T" "$@" > /dev/null 2> "$log" || { echo "failed - -"; return; }
  local p d r
  p=$(sed -n 's/.*prompt: [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' "$log")
  d=$(sed -n 's/.*generated [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' "$log")
  r=$(sed -n 's/.*layer round trips, mean \([0-9.]*\) us.*/\1/p' "$log")
  echo "${p:--} ${d:--} ${r:--}"
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "copy bandwidth (pi-bench-cuda, read + written): ${copy:-?} GB/s; $T threads per process; $(nproc) CPUs"
echo
echo "| model | configuration | prompt tok/s | decode tok/s | round trip us | decode GB/s (share of copy) |"
echo "|---|---|---:|---:|---:|---:|"
for spec in "demo demo tests/data/demo-relu-q4_0.gguf 128" "1b 1B-class /tmp/m1b.gguf 64" "7b 7B-class /tmp/m7b.gguf 32"; do
  set -- $spec
  case " $M " in *" $1 "*) ;; *) continue ;; esac
  name=$2 mod=$3 n=$4
  wb=$(wbytes "$mod")
  for c in "none 0" "host 1" "host 0.5" "cuda 1" "cuda 0.5"; do
    set -- $c
    read -r p d r < <(one "$mod" "$n" --gpu-backend "$1" --hot-fraction "$2" --cpu-workers 1)
    bw="-"
    if [ "$1 $2" = "cuda 1" ] && [ "$d" != "-" ] && [ -n "$copy" ]; then
      bw=$(awk -v w="$wb" -v d="$d" -v c="$copy" 'BEGIN { g = w * d / 1e9; printf "%.0f (%.0f%%)", g, 100 * g / c }')
    fi
    label="$1, hot $2"; [ "$1" = none ] && label="single process (CPU)"
    echo "| $name ($(awk -v w="$wb" 'BEGIN { printf "%.0f MB", w / 1e6 }') per token) | $label | $p | $d | $r | $bw |"
  done
done
