#!/bin/bash
# tools/bench-pipeline.sh - the pipeline's benchmark (not a test): the per-layer exchange round trip
# (publish to every partial merged, measured inside pi-gpu-worker) with 1 and 2 CPU workers, and
# decode tokens/s of the pipeline against the single-process forward pass, on one model.
# Usage: tools/bench-pipeline.sh [BUILD_DIR] [MODEL] [N_TOKENS]
#   BUILD_DIR  a configured and built tree (default build-demo), MODEL a GGUF file (default the demo
#   model; a model without a tokenizer, e.g. from pi-gen-model, works: the prompt is given as ids),
#   N_TOKENS tokens generated per run (default 128). THREADS (default: all CPUs) is given to every
#   process (--cpu-threads: the single process, the host backend and each CPU worker).
#   Run it with `nice` on a shared machine; the numbers mean little on an overloaded one.
set -u
cd "$(dirname "$0")/.."
b=${1:-build-demo}
model=${2:-tests/data/demo-relu-q4_0.gguf}
n=${3:-128}
coord=$b/coordinator/pi-coordinator
[ -x "$coord" ] || { echo "bench-pipeline.sh: $coord not built" >&2; exit 2; }
ids=1,450,1020,408,372,395,479,1032,412,1136,339,3289 # BOS + "The jury said it did find that many of the laws" (demo vocabulary)
threads=${THREADS:-$(nproc)}
run=$(mktemp -d /tmp/pinfer-bench.XXXXXX)
trap 'rm -rf "$run"' EXIT

# One one-shot run; prints "decode_tok_s round_trip_us" from the log lines.
one() {
    "$coord" --model "$model" --tokens "$ids" -n "$n" --temp 0 --run-dir "$run" --log-level info --cpu-threads "$threads" "$@" \
        >/dev/null 2>"$run/log" || { cat "$run/log" >&2; echo "- -"; return; }
    tok=$(sed -n 's/.*generated [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' "$run/log")
    rt=$(sed -n 's/.*layer round trips, mean \([0-9.]*\) us.*/\1/p' "$run/log")
    echo "${tok:--} ${rt:--}"
}

echo "model: $model, $n tokens greedy, $threads threads per process, $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1))"
printf '%-44s %12s %16s\n' "configuration" "decode tok/s" "round trip us"
read -r t _ < <(one --gpu-backend none)
printf '%-44s %12s %16s\n' "single process (--gpu-backend none)" "$t" "-"
for w in 1 2; do
    for h in 1 0.5 0; do
        read -r t r < <(one --gpu-backend host --cpu-workers "$w" --hot-fraction "$h")
        printf '%-44s %12s %16s\n' "pipeline host, $w CPU worker(s), hot $h" "$t" "$r"
    done
done
