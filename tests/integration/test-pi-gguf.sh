#!/bin/sh
# tests/integration/test-pi-gguf.sh - pi-gguf as a user runs it: --check on good and bad files (exit status, one
# "pi-gguf: FILE: reason" line per bad file on stderr), the listing of a real file, --help, --version
# and usage errors; NaN scales refused by --check and by pi-coordinator's load. The good files are
# hand-made here with printf (so this runs without fixtures) and, when present, the fixtures made by
# llama.cpp. TAP output for Automake's tap-driver.sh.

PI_GGUF=${PI_BUILDDIR:-.}/tools/pi-gguf
T=$(mktemp -d "${TMPDIR:-/tmp}/test-pi-gguf.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
trap 'rm -rf "$T"' EXIT
n=0
failed=0

ok() { # ok COND-STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}

[ -x "$PI_GGUF" ] || { echo "Bail out! $PI_GGUF not built"; exit 1; }

# The smallest valid file: magic, version 3, no tensors, no keys. Then one with a u32 key
# ("a" = 7) and one f32 tensor "w" of 8 elements at data offset 0 (data section at 96).
printf 'GGUF\003\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' > "$T/min.gguf"
{
    printf 'GGUF\003\000\000\000\001\000\000\000\000\000\000\000\001\000\000\000\000\000\000\000'
    printf '\001\000\000\000\000\000\000\000a\004\000\000\000\007\000\000\000'
    printf '\001\000\000\000\000\000\000\000w\001\000\000\000\010\000\000\000\000\000\000\000'
    printf '\000\000\000\000\000\000\000\000\000\000\000\000'
    printf '\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000'
    printf '\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000'
} > "$T/one.gguf"
# Bad files: empty, wrong magic, GGUF v1, n_kv of 2^60, and one.gguf cut inside its tensor data.
: > "$T/empty.gguf"
printf 'GGML\003\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' > "$T/magic.gguf"
printf 'GGUF\001\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' > "$T/v1.gguf"
printf 'GGUF\003\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\020xxxxxxxxxxxxxxxx' > "$T/nkv.gguf"
head -c 100 "$T/one.gguf" > "$T/cut.gguf"

"$PI_GGUF" --check "$T/min.gguf" "$T/one.gguf" > "$T/out" 2> "$T/err"
ok $? "--check accepts two hand-made valid files"
grep -q "one.gguf: ok" "$T/out" && [ ! -s "$T/err" ]
ok $? "--check prints FILE: ok and nothing on stderr"

for f in empty magic v1 nkv cut; do
    "$PI_GGUF" --check "$T/$f.gguf" > "$T/out" 2> "$T/err"
    st=$?
    [ $st -eq 1 ] && [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q "^pi-gguf: $T/$f.gguf: .* at offset [0-9]*\$" "$T/err"
    ok $? "--check $f.gguf: exit 1 and one line 'pi-gguf: FILE: ... at offset N' ($(cat "$T/err"))"
done
grep -q "past end of file" "$T/err"
ok $? "the cut file's message says the tensor data runs past the end"

"$PI_GGUF" --check "$T/one.gguf" "$T/v1.gguf" "$T/min.gguf" "$T/magic.gguf" > "$T/out" 2> "$T/err"
st=$?
[ $st -eq 1 ] && [ "$(wc -l < "$T/err")" -eq 2 ] && [ "$(grep -c ': ok$' "$T/out")" -eq 2 ]
ok $? "--check on good and bad files together: exit 1, one stderr line per bad file"

"$PI_GGUF" --check "$T/none.gguf" 2> "$T/err"
[ $? -eq 1 ] && grep -q "^pi-gguf: $T/none.gguf: open failed" "$T/err"
ok $? "--check on a missing file names it"

"$PI_GGUF" "$T/one.gguf" > "$T/out" 2> "$T/err"
[ $? -eq 0 ] && grep -q '"a" = u32 7' "$T/out" && grep -q '"w" *f32 *\[8\] *96 *32' "$T/out"
ok $? "listing shows the key, and the tensor's type, shape, file offset and bytes"

if [ -n "$PI_FIXTURES" ] && [ -f "$PI_FIXTURES/models/tiny-llama-q4_0.gguf" ]; then
    "$PI_GGUF" --check "$PI_FIXTURES"/models/*.gguf "$PI_FIXTURES"/quant/blocks.gguf "$PI_FIXTURES"/vocab/*.gguf > "$T/out" 2> "$T/err"
    ok $? "--check accepts every fixture made by llama.cpp and gguf-py"
    "$PI_GGUF" "$PI_FIXTURES/models/tiny-llama-q4_0.gguf" > "$T/out"
    [ $? -eq 0 ] && grep -q '"general.architecture" = string "llama"' "$T/out" &&
        grep -q '"tokenizer.ggml.tokens" = array\[string\] 32000: "<unk>", "<s>", "</s>"' "$T/out" &&
        grep -q '"token_embd.weight" *q4_0 *\[64 x 32000\]' "$T/out"
    ok $? "listing of tiny-llama-q4_0: architecture, token array summary, tensor table"
    head -c 300000 "$PI_FIXTURES/models/tiny-llama-q4_0.gguf" > "$T/cut-model.gguf"
    "$PI_GGUF" --check "$T/cut-model.gguf" 2> "$T/err"
    [ $? -eq 1 ] && grep -q "tokenizer.ggml" "$T/err"
    ok $? "a model cut inside its vocabulary: the message names the key ($(cat "$T/err"))"
elif [ -f "${PI_SRCDIR:-.}/tests/data/tiny-llama-q4_0.gguf" ]; then
    # Without the shared fixtures: the copy of the tiny model committed in tests/data.
    M=${PI_SRCDIR:-.}/tests/data/tiny-llama-q4_0.gguf
    "$PI_GGUF" --check "$M" > "$T/out" 2> "$T/err"
    ok $? "--check accepts tests/data/tiny-llama-q4_0.gguf (made by llama.cpp)"
    "$PI_GGUF" "$M" > "$T/out"
    [ $? -eq 0 ] && grep -q '"general.architecture" = string "llama"' "$T/out" &&
        grep -q '"token_embd.weight" *q4_0 *\[64 x 32000\]' "$T/out"
    ok $? "listing of tests/data/tiny-llama-q4_0.gguf"
    n=$((n + 1)); echo "ok $n # SKIP fixtures not found"
else
    for i in 1 2 3; do n=$((n + 1)); echo "ok $n # SKIP fixtures not found"; done
fi

# NaN and infinity (model/tensor-check.h; issue 20, defect 10): a q4_0 block's fp16 scale d (the first 2
# of its 18 bytes) set to 0x7e00, a NaN. In block 5 of blk.3.ffn_up.weight (inside the first of the
# sampled windows): pi-gguf --check and pi-coordinator's default load refuse it. In block 2290 of
# token_embd.weight (65,536 blocks: between the first two windows): the default load passes, and
# pi-coordinator --check-tensors full and pi-gguf --check refuse it.
D=${PI_SRCDIR:-.}/tests/data/demo-relu-q4_0.gguf
PI_COORD=${PI_BUILDDIR:-.}/coordinator/pi-coordinator
offset_of() { "$PI_GGUF" "$D" | awk -v t="\"$1\"" '$2 == t { print $(NF - 1) }'; }
poke_nan() { # poke_nan FILE OFFSET
    printf '\000\176' | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}
up=$(offset_of blk.3.ffn_up.weight)
emb=$(offset_of token_embd.weight)
if [ -f "$D" ] && [ -n "$up" ] && [ -n "$emb" ] && [ -x "$PI_COORD" ]; then
    cp "$D" "$T/nan.gguf" && poke_nan "$T/nan.gguf" $((up + 5 * 18))
    "$PI_GGUF" --check "$D" "$T/nan.gguf" > "$T/out" 2> "$T/err"
    [ $? -eq 1 ] && grep -q ': ok$' "$T/out" && [ "$(wc -l < "$T/err")" -eq 1 ] &&
        grep -q "^pi-gguf: $T/nan.gguf: blk.3.ffn_up.weight (q4_0): block 5 of [0-9]* has a non-finite scale (nan)\$" "$T/err"
    ok $? "--check: a NaN scale in a q4_0 block is refused, naming tensor and block ($(cat "$T/err"))"
    "$PI_COORD" --model "$T/nan.gguf" --gpu-backend none --prompt Hi -n 1 > "$T/out" 2> "$T/err"
    st=$?
    [ $st -eq 2 ] && grep -q "blk.3.ffn_up.weight (q4_0): block 5 .* (nan)" "$T/err"
    ok $? "pi-coordinator: the same file is refused at load (exit $st): $(head -c 300 "$T/err")"
    cp "$D" "$T/nan-mid.gguf" && poke_nan "$T/nan-mid.gguf" $((emb + 2290 * 18))
    "$PI_COORD" --model "$T/nan-mid.gguf" --gpu-backend none --prompt Hi -n 1 > "$T/out" 2> "$T/err"
    ok $? "pi-coordinator: a NaN between the sampled windows passes the default check"
    "$PI_COORD" --model "$T/nan-mid.gguf" --gpu-backend none --check-tensors full --prompt Hi -n 1 > "$T/out" 2> "$T/err"
    st=$?
    [ $st -eq 2 ] && grep -q "token_embd.weight (q4_0): block 2290 of 65536 has a non-finite scale (nan)" "$T/err"
    ok $? "pi-coordinator --check-tensors full refuses it (exit $st): $(head -c 300 "$T/err")"
    "$PI_GGUF" --check "$T/nan-mid.gguf" > /dev/null 2>&1
    [ $? -eq 1 ]
    ok $? "pi-gguf --check reads every block: refused too"
else
    for i in 1 2 3 4 5; do n=$((n + 1)); echo "ok $n # SKIP tests/data/demo-relu-q4_0.gguf or pi-coordinator missing"; done
fi

"$PI_GGUF" --help > "$T/out"
[ $? -eq 0 ] && grep -q "^Usage: pi-gguf" "$T/out" && grep -q -- "--check" "$T/out"
ok $? "--help"
"$PI_GGUF" --version > "$T/out"
[ $? -eq 0 ] && grep -q "^pi-gguf (pinfer) [0-9]" "$T/out"
ok $? "--version"
"$PI_GGUF" > /dev/null 2>&1
[ $? -eq 2 ]
ok $? "no FILE is a usage error (exit 2)"
"$PI_GGUF" --bogus "$T/min.gguf" > /dev/null 2>&1
[ $? -eq 2 ]
ok $? "an unknown option is a usage error (exit 2)"

echo "1..$n"
[ $failed -eq 0 ]
