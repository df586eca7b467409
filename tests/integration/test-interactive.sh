#!/bin/sh
# tests/integration/test-interactive.sh - pi-coordinator -i (coordinator/interactive.c) driven through a pipe on
# the demo model, greedy: a two-turn conversation answers both turns, the second evaluates only the tokens its
# cache lacks (the debug line "chat turn 2: N tokens, K of them in the cache, evaluating N-K"), /exit and end of
# input end with status 0 (in process and through the pipeline, which a worker's death between turns does not
# end), the first reply is the one-shot --chat reply, a full context starts over or refuses and says so, a
# Ctrl-C at the prompt quits, one during a reply stops it (the chat goes on), two quit; then the sampling options
# that only the command line has (--stop, --logit-bias, the penalties) in both modes, and the new user's parser
# bugs (issue 19), tools/demo.sh --help included. TAP output.
b=${PI_BUILDDIR:-.}
m=${PI_SRCDIR:-..}/tests/data/demo-relu-q4_0.gguf
coord=$b/coordinator/pi-coordinator
t=$(mktemp -d /tmp/pi-interactive.XXXXXX)
trap 'rm -rf "$t"' EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
base="--model $m --gpu-backend none --chat-template chatml --temp 0 -n 16"
chat() { timeout 60 "$coord" $base -i "$@" >"$t/out" 2>"$t/err"; } # standard input: the conversation

# ---- two turns through a pipe, /exit
printf 'Tell me about the jury\nWhat did they find?\n/exit\nThis line comes after /exit\n' | chat --log-level debug; rc=$?
replies=$(grep -c . "$t/out")
turns=$(grep -c "info: chat turn" "$t/err")
[ $rc = 0 ] && [ "$replies" = 2 ] && [ "$turns" = 2 ]
ok $? "two turns then /exit: status $rc, $replies replies, $turns turns (nothing after /exit)"
line=$(grep "debug: chat turn 2:" "$t/err")
tot=$(echo "$line" | sed -n 's/.*chat turn 2: \([0-9]*\) tokens, \([0-9]*\) of them in the cache, evaluating \([0-9]*\) .*/\1/p')
kept=$(echo "$line" | sed -n 's/.*chat turn 2: \([0-9]*\) tokens, \([0-9]*\) of them in the cache, evaluating \([0-9]*\) .*/\2/p')
ev=$(echo "$line" | sed -n 's/.*chat turn 2: \([0-9]*\) tokens, \([0-9]*\) of them in the cache, evaluating \([0-9]*\) .*/\3/p')
first=$(grep "debug: chat turn 1:" "$t/err" | sed -n 's/.*chat turn 1: \([0-9]*\) tokens.*/\1/p')
[ -n "$ev" ] && [ "$kept" -gt "$first" ] && [ $((kept + ev)) = "$tot" ] && [ "$ev" -lt "$((tot - first))" ]
ok $? "turn 2 evaluates only the new tokens: $ev of $tot, $kept from the cache (turn 1 had $first)"
grep -q "evaluating the prompt: $tot tokens from position $kept" "$t/err"
ok $? "the generation starts at position $kept (generate.c's own line)"
head -1 "$t/out" >"$t/reply1"
timeout 60 "$coord" $base --chat -p "Tell me about the jury" --log-level warn >"$t/oneshot" 2>"$t/err1"
cmp -s "$t/reply1" "$t/oneshot"
ok $? "the first reply is the one-shot --chat reply ($(cat "$t/reply1"))"

# ---- -p is the first message (then end of input)
chat -p "Tell me about the jury" </dev/null; rc=$?
[ $rc = 0 ] && cmp -s "$t/out" "$t/reply1"
ok $? "-i -p: the prompt is the first message, answered as typed (status $rc)"

# ---- end of input without /exit; the pipeline (a GPU worker and a CPU worker)
printf 'Tell me about the jury\nWhat did they find?' | timeout 60 "$coord" $base -i --gpu-backend host --cpu-workers 1 \
    --cpu-threads 1 --log-level debug >"$t/out" 2>"$t/err"; rc=$?
ev=$(sed -n 's/.*chat turn 2: \([0-9]*\) tokens, \([0-9]*\) of them in the cache, evaluating \([0-9]*\) .*/\3/p' "$t/err")
kept=$(sed -n 's/.*chat turn 2: \([0-9]*\) tokens, \([0-9]*\) of them in the cache, .*/\2/p' "$t/err")
[ $rc = 0 ] && [ "$(grep -c . "$t/out")" = 2 ] && [ -n "$kept" ] && [ "$kept" -gt 0 ]
ok $? "the pipeline: end of input ends with status 0 after two replies; turn 2 keeps $kept cached, evaluates $ev"

# ---- a worker killed between turns: the next message restarts the pipeline and is answered
mkfifo "$t/in3"
timeout 60 "$coord" $base -i --gpu-backend host --cpu-workers 1 --cpu-threads 1 -n 8 --log-level info <"$t/in3" \
    >"$t/out" 2>"$t/err" &
pid=$!
exec 5>"$t/in3"
printf 'Tell me about the jury\n' >&5
for _ in $(seq 200); do grep -q "info: chat turn 1" "$t/err" && break; sleep 0.05; done
gpu=$(sed -n 's/.*started gpu-worker 0: pid \([0-9]*\).*/\1/p' "$t/err" | head -1)
[ -n "$gpu" ] && kill -9 "$gpu"
for _ in $(seq 100); do grep -q "was killed by signal 9" "$t/err" && break; sleep 0.05; done
printf 'What did they find?\n' >&5
exec 5>&-
wait $pid; rc=$?
[ $rc = 0 ] && [ -n "$gpu" ] && [ "$(grep -c . "$t/out")" = 2 ] && grep -q "died since the last reply: restarting it" "$t/err"
ok $? "the GPU worker (pid $gpu) killed between turns: the next message restarts the pipeline and is answered (status $rc)"

# ---- a full context: the conversation starts over with the system prompt; a message too long is refused
printf 'Tell me about the jury\nWhat did they find and why?\n' | chat -c 80 --system "Be brief."; rc=$?
[ $rc = 0 ] && grep -q "context of 80 positions is full: the conversation starts over, keeping the system prompt" "$t/err" &&
    [ "$(grep -c . "$t/out")" = 2 ]
ok $? "a full context starts over, keeping the system prompt (status $rc)"
long=$(printf 'word %.0s' $(seq 200))
printf '%s\nhello\n' "$long" | chat -c 80; rc=$?
[ $rc = 0 ] && grep -q "does not fit the context of 80 positions: not sent" "$t/err" && [ "$(grep -c . "$t/out")" = 1 ]
ok $? "a message longer than the context is refused, the next one answered (status $rc)"

# ---- Ctrl-C at the prompt quits (a FIFO keeps standard input open while the first reply is made)
mkfifo "$t/in"
timeout 60 "$coord" $base -i --log-level info <"$t/in" >"$t/out" 2>"$t/err" &
pid=$!
exec 3>"$t/in"
printf 'Tell me about the jury\n' >&3
for _ in $(seq 100); do grep -q "chat turn 1" "$t/err" && break; sleep 0.1; done
kill -INT $pid
wait $pid; rc=$?
exec 3>&-
[ $rc = 0 ] && [ "$(grep -c . "$t/out")" = 1 ]
ok $? "Ctrl-C (SIGINT) at the prompt quits with status 0 (status $rc)"

# ---- Ctrl-C during a reply stops it and the chat goes on from what the cache holds; two quit. End of text is
# banned (--logit-bias 2-inf) so that a reply runs long enough to be interrupted.
mkfifo "$t/in2"
# (not under timeout(1), which passes on only the first signal: a watchdog of its own instead)
"$coord" $base -i -c 2048 -n 2000 --logit-bias 2-inf --log-level debug <"$t/in2" >"$t/out" 2>"$t/err" &
cpid=$!
(sleep 60; kill -9 $cpid 2>/dev/null) &
dog=$!
exec 4>"$t/in2"
printf 'Tell me about the jury\n' >&4
for _ in $(seq 200); do [ -s "$t/out" ] && break; sleep 0.02; done
kill -INT $cpid
for _ in $(seq 100); do grep -q "info: chat turn 1" "$t/err" && break; sleep 0.05; done
gen1=$(sed -n 's/.*info: chat turn 1: .* \([0-9]*\) generated in.*/\1/p' "$t/err")
[ -n "$gen1" ] && [ "$gen1" -lt 2000 ] && grep -q "pi-coordinator: stopped" "$t/err"
ok $? "SIGINT during a reply stops it ($gen1 of 2000 tokens) and says so"
printf 'And then?\n' >&4
for _ in $(seq 100); do grep -q "debug: chat turn 2" "$t/err" && break; sleep 0.05; done
kept=$(sed -n 's/.*chat turn 2: \([0-9]*\) tokens, \([0-9]*\) of them in the cache.*/\2/p' "$t/err")
[ -n "$kept" ] && [ "$kept" -gt 39 ]
ok $? "the next message is answered, the stopped reply's tokens still in the cache ($kept kept)"
kill -INT $cpid; sleep 0.3; kill -INT $cpid
wait $cpid; rc=$?
kill $dog 2>/dev/null
exec 4>&-
[ $rc = 0 ]
ok $? "two SIGINTs quit with status 0 while standard input stays open (status $rc)"

# ---- --stop and --logit-bias reach the stop matcher and the sampler, one-shot and interactive
full=$(cat "$t/oneshot")
word=$(echo "$full" | awk '{print $4}')
want=${full%%"$word"*}
printf 'Tell me about the jury\n' | chat --stop "$word"
[ "$(cat "$t/out")" = "$want" ]
ok $? "-i --stop '$word': the reply ends before it ('$want')"
timeout 60 "$coord" $base --chat -p "Tell me about the jury" --stop "$word" --log-level warn >"$t/o2" 2>&1
[ "$(cat "$t/o2")" = "$want" ]
ok $? "one-shot --stop '$word': the output ends before it"
timeout 60 "$coord" $base -p "The jury" --logit-bias 263+inf -n 4 --log-level warn >"$t/o3" 2>&1
[ "$(cat "$t/o3")" = " the the the the" ]
ok $? "one-shot --logit-bias 263+inf forces token 263 ('$(cat "$t/o3")')"
printf 'hi\n' | chat -n 3 --logit-bias 263+inf
[ "$(cat "$t/out")" = " the the the" ]
ok $? "-i --logit-bias 263+inf forces it in a reply too ('$(cat "$t/out")')"
timeout 60 "$coord" $base -p "The jury said it did find that" -n 24 --log-level warn >"$t/p0" 2>&1
timeout 60 "$coord" $base -p "The jury said it did find that" -n 24 --frequency-penalty 2 --presence-penalty 2 \
    --log-level warn >"$t/p1" 2>&1; rc=$?
[ $rc = 0 ] && ! cmp -s "$t/p0" "$t/p1"
ok $? "--frequency-penalty 2 --presence-penalty 2 change the greedy text"

# ---- bad values: one line, status 2
bad() { # bad NAME WANT ARGS...
    name=$1; want=$2; shift 2
    timeout 30 "$coord" --model "$m" --gpu-backend none "$@" >"$t/out" 2>"$t/err"; rc=$?
    [ $rc = 2 ] && grep -q -- "$want" "$t/err" && [ "$(wc -l <"$t/err")" = 1 ] && [ ! -s "$t/out" ]
    ok $? "$name: status $rc, $(cat "$t/err")"
}
bad "--logit-bias without a sign" "expected ID+BIAS or ID-BIAS" -p x --logit-bias 263
bad "--logit-bias NaN" "expected ID+BIAS" -p x --logit-bias 263+nan
bad "--logit-bias out of range" "expected ID+BIAS" -p x --logit-bias 263+1000
bad "--logit-bias past the vocabulary" "outside the model's vocabulary" -p x --logit-bias 99999-1
bad "--stop empty" "--stop '': empty" -p x --stop ""
bad "--stop not UTF-8" "not valid UTF-8" -p x --stop "$(printf '\377')"
bad "--presence-penalty out of range" "presence_penalty: 3 is out of range" -p x --presence-penalty 3
bad "--system without a chat" "--system needs -i" -p x --system hi
bad "-i with --tokens" "not with --tokens" -i --tokens 1,2
bad "-i on a model without a chat template" "no tokenizer.chat_template" -i

# ---- the new user's parser bugs (issue 19)
bad "-cnv" "-cnv is llama.cpp's conversation mode: pinfer's chat is -i" -cnv
bad "an unknown option inside a cluster is named" "unknown option -z" -p x -iz
bad "an unknown long option is named" "unknown option --bogus" -p x --bogus
bad "a missing value is named" "option -n needs a value" -p x -n
bad "an ambiguous abbreviation is named with its options" "option --con is ambiguous: --control, --config" -p x --con f
bad "a value for an option that takes none" "option --chat takes no value" -p x --chat=1
for flag in --help --version; do
    timeout 30 "$coord" --model "$m" --gpu-backend none --prompt "$flag" -n 2 --temp 0 >"$t/out" 2>"$t/err"; rc=$?
    [ $rc = 0 ] && ! grep -q "Usage:\|pi-coordinator (pinfer)" "$t/out" && grep -q "prompt: [0-9]* tokens" "$t/err"
    ok $? "--prompt $flag is a prompt, not the flag (status $rc)"
done
timeout 30 "$coord" -m "$m" -c 64 -t 1 -s 3 -n 2 -p "The jury" --gpu-backend none --log-level warn >"$t/out" 2>"$t/err"; rc=$?
[ $rc = 0 ] && [ -s "$t/out" ]
ok $? "llama.cpp's short options -m -c -t -s -n -p (status $rc)"

# tools/demo.sh --help is help, not the prompt "--help": run on a copy without its build scripts, so that a
# demo.sh that took it for the prompt fails at once instead of installing and building anything
mkdir -p "$t/demo/tools"
cp "${PI_SRCDIR:-..}/tools/demo.sh" "$t/demo/tools/demo.sh"
timeout 20 bash "$t/demo/tools/demo.sh" --help >"$t/out" 2>"$t/err"; rc=$?
[ $rc = 0 ] && grep -q "^Usage: tools/demo.sh" "$t/out" && [ ! -d "$t/demo/build-demo" ]
ok $? "tools/demo.sh --help prints its usage and runs nothing (status $rc)"
timeout 20 bash "$t/demo/tools/demo.sh" --bogus >"$t/out" 2>"$t/err"; rc=$?
[ $rc = 2 ] && grep -q "unknown option --bogus" "$t/err" && [ ! -d "$t/demo/build-demo" ]
ok $? "tools/demo.sh --bogus: status $rc, $(cat "$t/err")"

echo "1..$n"
[ $fails = 0 ]
