#!/bin/sh
# tests/integration/test-chat-cli.sh - pi-coordinator --chat: the prompt becomes one user turn of the chat format
# (tokenized with special tokens parsed), and bad chat settings are one clear error with status 2.
# The expected prompt is written here from the chatml format's definition and tokenized by pi-tokenize.
b=${PI_BUILDDIR:-.}
m=${PI_SRCDIR:-..}/tests/data/demo-relu-q4_0.gguf
coord=$b/coordinator/pi-coordinator
tok=$b/tools/pi-tokenize
t=$(mktemp -d /tmp/pi-chat-cli.XXXXXX)
trap 'rm -rf "$t"' EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
run() { timeout 60 "$coord" --model "$m" --gpu-backend none -n 0 --log-level info "$@" >"$t/out" 2>"$t/err"; }

run --chat --prompt hi; rc=$?
[ $rc = 2 ] && grep -q "no tokenizer.chat_template" "$t/err" && [ "$(wc -l <"$t/err")" = 1 ]
ok $? "--chat on a model without a template: one line, status 2 (rc $rc: $(cat "$t/err"))"

run --chat --chat-template bogus --prompt hi; rc=$?
[ $rc = 2 ] && grep -q "'bogus' is not a known chat format" "$t/err"
ok $? "unknown --chat-template: status 2 (rc $rc)"

run --chat; rc=$?
[ $rc = 2 ] && grep -q "needs --prompt" "$t/err"
ok $? "--chat without --prompt: status 2 (rc $rc)"

run --chat --chat-template chatml --prompt "Tell me about the jury"; rc=$?
got=$(sed -n 's/.*prompt: \([0-9]*\) tokens.*/\1/p' "$t/err")
want=$(printf '<|im_start|>user\nTell me about the jury<|im_end|>\n<|im_start|>assistant\n' | timeout 30 "$tok" --model "$m" --parse-special - | wc -w)
[ $rc = 0 ] && [ -n "$got" ] && [ "$got" = "$want" ]
ok $? "chatml prompt: $got tokens, pi-tokenize of the chatml text gives $want"

echo "1..$n"
[ $fails = 0 ]
