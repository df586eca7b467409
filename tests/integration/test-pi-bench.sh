#!/bin/sh
# tests/integration/test-pi-bench.sh - pi-bench as a user runs it: the llama-bench table of the demo model in md,
# csv and json, in-process (--gpu-backend none) and through the process pipeline (host backend, one
# CPU worker), checking the header, one row per test and that every figure parses (never a timing);
# a generated model (-m gen:tiny); the --exchange and --kernels matmul modes; --help, --version; and
# each kind of bad value: one line on stderr and exit status 2. TAP output for tap-driver.sh.

B=${PI_BUILDDIR:-.}/coordinator/pi-bench
M=${PI_SRCDIR:-.}/tests/data/demo-relu-q4_0.gguf
T=$(mktemp -d "${TMPDIR:-/tmp}/test-pi-bench.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
trap 'rm -rf "$T"' EXIT
n=0

ok() { # ok STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

[ -x "$B" ] || { echo "Bail out! $B not built"; exit 1; }
[ -r "$M" ] || { echo "Bail out! $M missing"; exit 1; }
RUN="--run-dir $T/run -p 16 -n 4 -r 1 -t 1"

# md_check FILE HEADER SEPARATOR BACKEND: the header and separator lines as given, then a pp16 and a
# tg4 row whose backend cell is BACKEND and whose t/s cell is "X.XX ± Y.YY" with X > 0
md_check() {
    [ "$(sed -n 1p "$1")" = "$2" ] || { echo "# header: $(sed -n 1p "$1")"; return 1; }
    [ "$(sed -n 2p "$1")" = "$3" ] || { echo "# separator: $(sed -n 2p "$1")"; return 1; }
    [ "$(wc -l < "$1")" -eq 4 ] || { echo "# $(wc -l < "$1") lines"; return 1; }
    awk -F'|' -v be="$4" 'NR > 2 {
        nf = NF - 2; ts = $(nf + 1); test = $(nf); gsub(/^ +| +$/, "", ts); gsub(/ /, "", test)
        b = $5; gsub(/ /, "", b)
        want = NR == 3 ? "pp16" : "tg4"
        if (test != want || b != be || $2 !~ /^ llama [0-9]+M Q4_0 +$/ || $3 !~ / [0-9]+\.[0-9][0-9] MiB $/ ||
            $4 !~ / [0-9]+\.[0-9][0-9] M $/) { print "# row " NR ": " $0; bad = 1 }
        if (ts !~ /^[0-9]+\.[0-9][0-9] ± [0-9]+\.[0-9][0-9]$/ || ts + 0 <= 0) { print "# t/s: " ts; bad = 1 }
    } END { exit bad }' "$1"
}

H7='| model                          |       size |     params | backend    | threads |          test |                  t/s |'
S7='| ------------------------------ | ---------: | ---------: | ---------- | ------: | ------------: | -------------------: |'
H9='| model                          |       size |     params | backend    |   hot | workers | threads |          test |                  t/s |'
S9='| ------------------------------ | ---------: | ---------: | ---------- | ----: | ------: | ------: | ------------: | -------------------: |'

"$B" -m "$M" $RUN -o md --gpu-backend none > "$T/none.md" 2> "$T/err"
st=$?
[ $st -eq 0 ] && md_check "$T/none.md" "$H7" "$S7" CPU
ok $? "-o md, --gpu-backend none: llama-bench's header and a pp16 and a tg4 row (exit $st)"

"$B" -m "$M" $RUN -o md --gpu-backend host --cpu-workers 1 --hot-fraction 0.5 > "$T/host.md" 2> "$T/err"
st=$?
[ $st -eq 0 ] && md_check "$T/host.md" "$H9" "$S9" host
ok $? "-o md, --gpu-backend host: the pipeline's rows, with the hot and workers columns (exit $st)"
awk -F'|' 'NR > 2 { h = $6; w = $7; gsub(/ /, "", h); gsub(/ /, "", w); if (h != "0.50" || w != "1") bad = 1 } END { exit bad }' "$T/host.md"
ok $? "the pipeline's rows say hot 0.50 and 1 worker"
[ ! -s "$T/err" ]
ok $? "nothing on stderr at the default log level ($(head -c 200 "$T/err"))"

# the model's activation profile (its sidecar) places the hot neurons, as in pi-coordinator
P=${PI_BUILDDIR:-.}/tools/pi-profile
cp "$M" "$T/demo.gguf"
"$P" -m "$T/demo.gguf" --random 128 -c 64 -t 1 > /dev/null 2> "$T/err" &&
    "$B" -m "$T/demo.gguf" $RUN -o md --gpu-backend host --cpu-workers 1 --hot-fraction 0.5 --log-level info \
        > "$T/prof.md" 2> "$T/err" && md_check "$T/prof.md" "$H9" "$S9" host &&
    grep -q "sidecar $T/demo.pinfer.gguf: profile of 128 tokens" "$T/err" &&
    grep -q "placement: solved from the activation profile" "$T/err"
ok $? "with a sidecar beside the model, the solver places the hot neurons from its profile ($(grep -m1 placement "$T/err" | head -c 160))"

# csv: the header, then one quoted row per test with every field; numbers where numbers belong
CSVH=pinfer_version,cpu_info,model_filename,model_type,model_size,model_n_params,backend,hot_fraction,hot_share,n_hot,n_layer,n_ff,cpu_workers,n_threads,n_prompt,n_gen,test_time,avg_ns,stddev_ns,avg_ts,stddev_ts,decode_gbs,bw_gbs,bw_share,sparsity,ffn_sparsity,ffn_bytes_skipped,predictor_recall
for be in none host; do
    "$B" -m "$M" $RUN -o csv --gpu-backend $be --cpu-workers 1 > "$T/$be.csv" 2> "$T/err"
    st=$?
    [ $st -eq 0 ] && [ "$(sed -n 1p "$T/$be.csv")" = "$CSVH" ] && [ "$(wc -l < "$T/$be.csv")" -eq 3 ] &&
        awk -F'","' -v be=$be 'NR > 1 {
            if (NF != 28) { print "# " NF " fields"; bad = 1 }
            if ($7 != be || $15 + $16 == 0 || !($20 > 0) || $18 !~ /^[0-9]+$/ || $20 !~ /^[0-9]+\.[0-9]+$/) { print "# " $0; bad = 1 }
            if ((be == "host") != ($10 ~ /^[0-9]+$/ && $9 ~ /^0\.5/)) { print "# n_hot " $10 ", hot_share " $9; bad = 1 }
            if ($25 != "off" || $26 != "" || $28 != "\"") { print "# sparsity " $25 " " $26 " " $28; bad = 1 }
        } END { exit bad }' "$T/$be.csv"
    ok $? "-o csv, --gpu-backend $be: the header and two rows of 28 fields that parse, the hot share as placed (exit $st)"
done

# json: an array of two objects with llama-bench's figures and samples
for be in none host; do
    "$B" -m "$M" $RUN -o json --gpu-backend $be --cpu-workers 1 > "$T/$be.json" 2> "$T/err"
    st=$?
    [ $st -eq 0 ] && [ "$(sed -n 1p "$T/$be.json")" = "[" ] && [ "$(tail -n 1 "$T/$be.json")" = "]" ] &&
        [ "$(grep -c '"avg_ts": [0-9][0-9.]*,$' "$T/$be.json")" -eq 2 ] &&
        [ "$(grep -c "\"backend\": \"$be\"" "$T/$be.json")" -eq 2 ] &&
        [ "$(grep -c '"samples_ns": \[$' "$T/$be.json")" -eq 2 ]
    ok $? "-o json, --gpu-backend $be: two objects with avg_ts, backend and samples (exit $st)"
    if command -v python3 > /dev/null 2>&1; then
        python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); assert len(r) == 2 and all(x["avg_ts"] > 0 and len(x["samples_ts"]) == 1 for x in r)' "$T/$be.json"
        ok $? "-o json, --gpu-backend $be: valid JSON, positive avg_ts, one sample each"
    else
        echo "ok $((n = n + 1)) # SKIP no python3 to parse the JSON"
    fi
done

"$B" -m gen:tiny-q8_0-relu --run-dir "$T/run" -p 8 -n 0 -r 2 -t 1 --gpu-backend none --no-warmup --bw 10 > "$T/gen.md" 2> "$T/err"
st=$?
[ $st -eq 0 ] && [ "$(wc -l < "$T/gen.md")" -eq 3 ] && grep -q '^| llama [0-9]*M Q8_0 .* pp8 |.* | *- | *- |$' "$T/gen.md" &&
    [ -z "$(ls "$T/run" | grep gguf)" ]
ok $? "-m gen:tiny-q8_0-relu: one pp8 row with the GB/s columns, the generated file removed (exit $st)"

"$B" --exchange --iters 20 --n-embd 64 --cpu-workers 1 > "$T/ex.md" 2> "$T/err"
st=$?
[ $st -eq 0 ] && [ "$(grep -c '^| 64 | 1 | 1 | [0-9]* | [0-9.]* | [0-9.]* | [0-9.]* |$' "$T/ex.md")" -eq 2 ]
ok $? "--exchange: a row for spin 0 and one for the default spin (exit $st)"

"$B" --kernels matmul --rows 256 --cols 256 -p 4 -r 1 --types q4_0,q8_0 > "$T/mm.md" 2> "$T/err"
st=$?
# the last two columns: the 16-row packed product's GFLOP/s and ratio, or "-" where the variant has none
[ $st -eq 0 ] && [ "$(grep -c '^| q[48]_0 | [0-9.]* | [0-9.]* | [0-9.]*x | [a-z]* | \([0-9.]*\|-\) | \([0-9.]*x\|-\) |$' "$T/mm.md")" -eq 2 ]
ok $? "--kernels matmul: a row per type (exit $st)"

"$B" --kernels attention -p 3,40 -r 1 > "$T/att.md" 2> "$T/err"
st=$?
nv=$(grep -c '^| 64 | 3 | [a-z0-9]* | [0-9.]* | [0-9.]* |$' "$T/att.md")
[ $st -eq 0 ] && [ "$nv" -ge 1 ] && [ "$(grep -c '^| [0-9]* | [0-9]* | [a-z0-9]* | [0-9.]* | [0-9.]* |$' "$T/att.md")" -eq $((4 * nv)) ]
ok $? "--kernels attention: a row per head size, position count and kernel variant ($nv variants, exit $st)"
"$B" --kernels attention --rows 64 > /dev/null 2> "$T/err"
[ $? -eq 2 ] && grep -q -- '--rows does not apply to --kernels attention' "$T/err"
ok $? "--kernels attention refuses --rows (exit 2)"

"$B" --help > "$T/out" 2> "$T/err"
st=$?
[ $st -eq 0 ] && grep -q '^Usage: pi-bench \[OPTION\]\.\.\.$' "$T/out" && grep -q 'default: 512$' "$T/out" && [ ! -s "$T/err" ]
ok $? "--help: usage with defaults on stdout, exit 0"
"$B" --version > "$T/out" 2> "$T/err"
[ $? -eq 0 ] && grep -q '^pi-bench (' "$T/out"
ok $? "--version"

# --set: a [tune] key reaches every engine (here the CPU kernels of the workers and of the in-process pass)
"$B" -m "$M" -p 8 -n 2 -r 1 --gpu-backend none,host --cpu-workers 1 -t 1 --set tune.cpu_kernels=scalar \
    --run-dir "$T/run" > "$T/out" 2> "$T/err"
[ $? -eq 0 ] && [ "$(grep -c '^| llama' "$T/out")" -eq 4 ]
ok $? "--set tune.cpu_kernels=scalar: both engines' tests run ($(grep -c '^| llama' "$T/out") rows)"

# --set tune.cpu_pack: auto packs the in-process engine's matrices and the worker's slice where the CPU has a
# 16-row kernel (the loader's debug line; the worker's count); off packs nothing, and both engines still run
for v in auto off; do
    "$B" -m "$M" -p 8 -n 2 -r 1 --gpu-backend none,host --cpu-workers 1 -t 1 --set tune.cpu_pack=$v --log-level debug \
        --run-dir "$T/run-$v" > "$T/out-$v" 2> "$T/err-$v"
    echo $? > "$T/st-$v"
done
if grep -q "packed in 16-row groups" "$T/err-auto"; then
    [ "$(cat "$T/st-auto")" -eq 0 ] && [ "$(cat "$T/st-off")" -eq 0 ] &&
        [ "$(grep -c '^| llama' "$T/out-off")" -eq 4 ] && ! grep -q "packed in 16-row groups" "$T/err-off" &&
        grep -q "(and [1-9][0-9]* in 16-row groups" "$T/err-auto" && grep -q "(and 0 in 16-row groups" "$T/err-off"
    ok $? "--set tune.cpu_pack=off: neither the engine nor the worker packs; auto: both do"
else
    echo "ok $((n = n + 1)) # SKIP tune.cpu_pack: this CPU variant has no 16-row kernel (auto packed nothing)"
fi

# usage errors: exit 2, exactly one line on stderr that starts with "pi-bench: ", nothing on stdout
usage_err() { # NAME ARGS...
    name=$1
    shift
    "$B" "$@" > "$T/out" 2> "$T/err"
    st=$?
    [ $st -eq 2 ] && [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q '^pi-bench: ' "$T/err" && [ ! -s "$T/out" ]
    ok $? "$name: exit 2 and one line ($st: $(cat "$T/err"))"
}
usage_err "no model" -p 16
usage_err "missing model file" -m "$T/none.gguf"
usage_err "unknown gen preset" -m gen:13x
usage_err "gen with an unknown part" -m gen:tiny-q4_0-gelu
usage_err "-p not a number" -m "$M" -p 16,x
usage_err "-p empty list entry" -m "$M" -p 16,,32
usage_err "-n negative" -m "$M" -n -1
usage_err "no test (-p 0 -n 0)" -m "$M" -p 0 -n 0
usage_err "--ctx below the largest test" -m "$M" -p 64 -n 16 --ctx 32
usage_err "-r 0" -m "$M" -r 0
usage_err "-t 0" -m "$M" -t 0
usage_err "-o xml" -m "$M" -o xml
usage_err "--gpu-backend gpu" -m "$M" --gpu-backend gpu
usage_err "--hot-fraction 1.5" -m "$M" --hot-fraction 0.5,1.5
usage_err "--vram-budget 12Q" -m "$M" --vram-budget 12Q
usage_err "--cpu-workers 65" -m "$M" --cpu-workers 65
usage_err "--bw 0" -m "$M" --bw 0
usage_err "--log-level loud" -m "$M" --log-level loud
usage_err "--kernels dot" --kernels dot
usage_err "--cols not a multiple of 256" --kernels matvec --cols 100
usage_err "--types without a kernel" --kernels matvec --types q9_9
usage_err "--rows with the model tests" -m "$M" --rows 64
usage_err "-m with --exchange" --exchange -m "$M"
usage_err "two modes" --exchange --kernels matvec
usage_err "-r with --exchange" --exchange -r 3
usage_err "unknown option" -m "$M" --frobnicate
usage_err "missing value" -m "$M" -p
usage_err "stray argument" -m "$M" extra
usage_err "--set outside [tune]" -m "$M" --set gpu.hot_fraction=1
usage_err "--set a bad [tune] value" -m "$M" --set tune.cuda_matvec=bogus
usage_err "--set without =" -m "$M" --set tune.cuda_matvec

echo "1..$n"
