#!/bin/bash
# tools/bench-pipeline.sh - the pipeline's benchmark (not a test): decode tokens/s of the single
# process (--gpu-backend none) and of the host pipeline at hot fraction 1, 0.5 and 0 with 1 and 2 CPU
# workers, in one pi-bench call (llama-bench's table, doc/bench.md), then the per-layer exchange
# round trips each pipeline measured (publish to every partial merged, logged by pi-gpu-worker when
# it stops; a hot-1 pipeline skips the exchange and logs no round trip).
# Usage: tools/bench-pipeline.sh [BUILD_DIR] [MODEL] [N_TOKENS]
#   BUILD_DIR  a configured and built tree (default build-demo), MODEL a GGUF file or a pi-bench
#   gen: spec (default the demo model), N_TOKENS tokens generated per run (default 128). THREADS
#   (default: all CPUs) is given to every process, REPS (default 3) the repetitions.
#   Run it with `nice` on a shared machine; the numbers mean little on an overloaded one.
set -u
cd "$(dirname "$0")/.."
b=${1:-build-demo}
model=${2:-tests/data/demo-relu-q4_0.gguf}
n=${3:-128}
bench=$b/coordinator/pi-bench
[ -x "$bench" ] || { echo "bench-pipeline.sh: $bench not built" >&2; exit 2; }
threads=${THREADS:-$(nproc)}
run=$(mktemp -d /tmp/pinfer-bench.XXXXXX)
trap 'rm -rf "$run"' EXIT

echo "model: $model, tg$n, $threads threads per process, $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1))"
echo
"$bench" -m "$model" -p 0 -n "$n" -r "${REPS:-3}" -t "$threads" --run-dir "$run" --gpu-backend none -o md || exit 1
echo
"$bench" -m "$model" -p 0 -n "$n" -r "${REPS:-3}" -t "$threads" --run-dir "$run" --gpu-backend host --hot-fraction 1,0.5,0 \
    --cpu-workers 1,2 -o md --log-level info 2> "$run/log" || { cat "$run/log" >&2; exit 1; }
echo
echo "exchange round trips of the pipelines with cold neurons, in the table's order (pi-gpu-worker's log):"
sed -n 's/.*exchange: \([0-9]*\) layer round trips, mean \([0-9.]*\) us.*/  \2 us mean over \1 round trips/p' "$run/log"
