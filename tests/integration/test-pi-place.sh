#!/bin/sh
# tests/integration/test-pi-place.sh - pi-place as a user runs it: pi-profile writes the demo model's
# activation profile (a short text), pi-place solves the placement from it and exports PowerInfer's
# GPU index, pi-coordinator runs the model with that index (--gpu-index) and pi-perplexity with the
# profile through the pipeline; a SwiGLU model's profile is refused;
# the plan's figures add up (hot counts per layer sum to the summary's); a missing profile, a profile
# of another model and usage errors each give one clear line and the documented exit status. TAP.
B=${PI_BUILDDIR:-.}
S=${PI_SRCDIR:-.}
PLACE=$B/tools/pi-place
PROFILE=$B/tools/pi-profile
COORD=$B/coordinator/pi-coordinator
T=$(mktemp -d "${TMPDIR:-/tmp}/test-pi-place.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
trap 'rm -rf "$T"' EXIT
n=0
ok() { # ok STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}
for p in "$PLACE" "$PROFILE" "$COORD"; do [ -x "$p" ] || { echo "Bail out! $p not built"; exit 1; }; done
M=$T/demo.gguf
cp "$S/tests/data/demo-relu-q4_0.gguf" "$M"
# a short calibration text: the first 4000 bytes of the bundled one
head -c 4000 "$S/data/demo-calib.txt" > "$T/calib.txt"
"$PROFILE" -m "$M" -f "$T/calib.txt" -c 128 > "$T/prof.out" 2> "$T/prof.err"
[ $? -eq 0 ] && [ -s "$T/demo.pinfer.gguf" ]
ok $? "pi-profile writes the sidecar next to the model"

"$PLACE" -m "$M" --gpu-backend host --hot-fraction 0.4 --cpu-workers 2 > "$T/out" 2> "$T/err"
st=$?
[ $st -eq 0 ] && [ -s "$M.generated.gpuidx" ] && grep -q '^wrote ' "$T/out" && grep -q '^modelled: ' "$T/out"
ok $? "pi-place solves, prints the plan and writes MODEL.generated.gpuidx (exit $st)"
total=$(sed -n 's/^hot: \([0-9]*\) of .*/\1/p' "$T/out")
sum=$(awk -F'|' '/^\| [0-9]/ { s += $3 } END { print s + 0 }' "$T/out")
[ -n "$total" ] && [ "$total" = "$sum" ] && [ "$total" -gt 0 ]
ok $? "the per-layer hot counts add up to the summary's ($sum, $total)"
rows=$(grep -c '^| [0-9]' "$T/out")
[ "$rows" -eq 8 ]
ok $? "one row per layer ($rows)"
magic=$(head -c 4 "$M.generated.gpuidx")
[ "$magic" = PWRI ]
ok $? "the GPU index carries PowerInfer's magic"
# split.vram_capacity in PowerInfer's sense: the hot neurons' weights alone, which its loader compares
# with what its budget leaves after the other weights; the demo's neuron is a Q4_0 gate row, up row and
# down column of 256 elements, 3 x 144 bytes
cap=$("$B/tools/pi-gguf" "$M.generated.gpuidx" 2>/dev/null | sed -n 's/.*"split.vram_capacity" = u64 \([0-9]*\).*/\1/p')
[ -n "$cap" ] && [ "$cap" = "$((total * 432))" ] && grep -q "(hot neurons' weights $cap bytes)" "$T/out"
ok $? "split.vram_capacity is the hot neurons' weights: $cap = $total x 432 bytes"

"$COORD" --model "$M" --prompt "The jury said" -n 4 --temp 0 --gpu-backend host --gpu-index "$M.generated.gpuidx" \
    --cpu-workers 2 --run-dir "$T/run" --log-level info > "$T/gen.out" 2> "$T/gen.err"
[ $? -eq 0 ] && [ -s "$T/gen.out" ] && grep -q "placement: the hot neurons of" "$T/gen.err"
ok $? "pi-coordinator runs the model with the exported index"

"$PLACE" -m "$M" --gpu-backend host -o "$T/x.gpuidx" --no-export -q > "$T/out" 2> "$T/err"
[ $? -eq 0 ] && [ ! -e "$T/x.gpuidx" ] && ! grep -q '^| ' "$T/out"
ok $? "--no-export writes nothing, -q prints no table"

# pi-perplexity reads the same profile and runs the solved placement through the pipeline
PPL=$B/coordinator/pi-perplexity
"$PPL" -m "$M" -f "$T/calib.txt" -c 128 --chunks 1 --gpu-backend host --cpu-workers 2 --run-dir "$T/run" \
    --log-level info > "$T/ppl.out" 2> "$T/ppl.err"
[ $? -eq 0 ] && grep -q "solved from the activation profile" "$T/ppl.err" && grep -q "Final estimate" "$T/ppl.out"
ok $? "pi-perplexity reads the profile and measures the solved placement"

# a SwiGLU model (the tiny llama): its profile cannot rank neurons; pi-place says so, exit 1
cp "$S/tests/data/tiny-llama-q4_0.gguf" "$T/tiny.gguf"
"$PROFILE" -m "$T/tiny.gguf" -f "$T/calib.txt" -c 64 > /dev/null 2>&1
"$PLACE" -m "$T/tiny.gguf" --gpu-backend host > "$T/out" 2> "$T/err"
st=$?
[ $st -eq 1 ] && grep -q 'SwiGLU' "$T/err"
ok $? "a SwiGLU model's profile is refused: exit 1 ($st: $(head -1 "$T/err"))"

# errors: exit 1 with one line naming the cause; usage errors exit 2
cp "$S/tests/data/demo-relu-q4_0.gguf" "$T/other.gguf"
"$PLACE" -m "$T/other.gguf" --gpu-backend host > "$T/out" 2> "$T/err"
st=$?
[ $st -eq 1 ] && grep -q 'no activation profile' "$T/err"
ok $? "no profile: exit 1, says to run pi-profile ($st: $(head -1 "$T/err"))"
"$PLACE" -m "$T/other.gguf" --sidecar "$S/tests/data/tiny-llama-q4_0.gguf" --gpu-backend host > "$T/out" 2> "$T/err"
st=$?
[ $st -eq 1 ] && [ -s "$T/err" ]
ok $? "a file that is not this model's profile: exit 1 ($st: $(head -1 "$T/err"))"
usage() { # NAME ARGS...
    name=$1
    shift
    "$PLACE" "$@" > "$T/out" 2> "$T/err"
    st=$?
    [ $st -eq 2 ] && [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q '^pi-place: ' "$T/err"
    ok $? "$name: exit 2, one line ($st: $(cat "$T/err"))"
}
usage "no model" --gpu-backend host
usage "--hot-fraction 2" -m "$M" --hot-fraction 2
usage "--cpu-workers 0" -m "$M" --cpu-workers 0
usage "--gpu-backend none" -m "$M" --gpu-backend none
usage "--set outside [placement]" -m "$M" --set gpu.device=1
usage "--set a bad speed" -m "$M" --set placement.cpu_gbs=-1
usage "stray argument" -m "$M" extra
"$PLACE" --help > "$T/out" 2>&1 && grep -q '^Usage: pi-place' "$T/out"
ok $? "--help"
echo "1..$n"
