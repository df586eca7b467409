#!/bin/bash
# tools/demo.sh - the README's main command: installs what the build needs (Debian 12, as root),
# bootstraps, configures and builds in build-demo/, then runs pinfer on the embedded demo model
# (tests/data/demo-relu-q4_0.gguf, a small ReLU llama trained for this project's tests):
#   1. one-shot through the process pipeline: pi-coordinator spawns pi-gpu-worker (host backend)
#      and two pi-cpu-workers, generates 64 tokens from the prompt, prints them;
#   2. a server-mode coordinator: `pi-ctl ps` (the model, the split, the workers), a chat completion
#      asked of its OpenAI-compatible HTTP API with curl, a generation over the control socket, and
#      `pi-ctl shutdown`.
# Usage: tools/demo.sh [--] ["prompt"]; tools/demo.sh --help. Greedy unless PI_DEMO_TEMP / PI_DEMO_SEED are set.
set -u
usage() {
    cat <<'EOF'
Usage: tools/demo.sh [--] [PROMPT]
Build pinfer (installing the build dependencies when missing: Debian 12, as root) in build-demo/ and run it
on the embedded demo model: a one-shot generation through the process pipeline, then a server-mode
coordinator asked over its HTTP API with curl and over its control socket with pi-ctl (ps, a
generation, shutdown).

  PROMPT        the prompt; default: "The jury said it did find that many of the laws"
  --            the next argument is the prompt even if it starts with '-'
  -h, --help    print this help and exit

Environment: PI_DEMO_TEMP (default 0: greedy) and PI_DEMO_SEED (default 1) set the sampling.
EOF
}
case "${1-}" in
-h | --help) usage; exit 0 ;;
--) shift ;;
-?*) printf 'tools/demo.sh: unknown option %s (see --help; a prompt that starts with - goes after --)\n' "$1" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { printf 'tools/demo.sh: one prompt at most (quote it; see --help)\n' >&2; exit 2; }
cd "$(dirname "$0")/.."
top=$(pwd)
prompt=${1:-"The jury said it did find that many of the laws"}
temp=${PI_DEMO_TEMP:-0}
seed=${PI_DEMO_SEED:-1}
model=$top/tests/data/demo-relu-q4_0.gguf
b=$top/build-demo

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'tools/demo.sh: %s\n' "$*" >&2; exit 1; }

# ---- dependencies (tools/install-deps.sh installs only what is missing)
bash tools/install-deps.sh || die "the build dependencies could not be installed"

# ---- build (quietly; the logs stay in build-demo/ when something fails)
mkdir -p "$b"
if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ]; then
    log "bootstrap"
    ./autogen.sh >"$b/autogen.log" 2>&1 || { cat "$b/autogen.log" >&2; die "autogen.sh failed"; }
fi
if [ ! -f "$b/Makefile" ]; then
    log "configure"
    (cd "$b" && "$top/configure" -q >configure.log 2>&1) || { tail -30 "$b/config.log" >&2; die "configure failed"; }
fi
log "build"
(cd "$b" && make -j"$(nproc 2>/dev/null || echo 2)" >make.log 2>&1) \
    || { grep -E 'error|Error' "$b/make.log" | head -30 >&2; die "build failed (see $b/make.log)"; }

coord=$b/coordinator/pi-coordinator
ctl=$b/tools/pi-ctl
[ -f "$model" ] || die "the demo model $model is missing"
gen=(-n 64 --temp "$temp" --seed "$seed")

echo
echo "Prompt: $prompt"
echo
log "pipeline: pi-coordinator + pi-gpu-worker (host backend, half the FFN neurons hot) + 2 pi-cpu-workers"
printf '%s' "$prompt"
"$coord" --model "$model" --prompt "$prompt" "${gen[@]}" --gpu-backend host --hot-fraction 0.5 --cpu-workers 2 \
    --log-level warn || die "pi-coordinator (pipeline) failed"
echo

[ -x "$ctl" ] || die "pi-ctl was not built"
echo
log "server mode: pi-coordinator with 2 CPU workers, asked over HTTP (curl) and the control socket (pi-ctl)"
run=$(mktemp -d /tmp/pinfer-demo.XXXXXX)
ep="ipc://$run/control.sock"
"$coord" --model "$model" --gpu-backend host --cpu-workers 2 --run-dir "$run" --control "$ep" \
    --http 127.0.0.1:0 --chat-template chatml --log-level info 2>"$run/coordinator.log" &
cpid=$!
trap 'kill $cpid 2>/dev/null; wait $cpid 2>/dev/null; rm -rf "$run"' EXIT
ok=0
for _ in $(seq 100); do
    if "$ctl" --endpoint "$ep" --timeout 500 ps >"$run/ps.txt" 2>/dev/null; then ok=1; break; fi
    kill -0 $cpid 2>/dev/null || break
    sleep 0.1
done
[ $ok -eq 1 ] || { cat "$run/coordinator.log" >&2; die "the server did not answer pi-ctl ps"; }
echo "\$ pi-ctl ps"
cat "$run/ps.txt"
port=$(sed -n 's|.*http: listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$run/coordinator.log" | head -1)
[ -n "$port" ] || { cat "$run/coordinator.log" >&2; die "the server's HTTP API did not start"; }
body=$(printf '{"model":"demo","messages":[{"role":"user","content":"%s"}],"max_tokens":32,"temperature":%s,"seed":%s}' \
    "$(printf '%s' "$prompt" | tr '\n\r\t' '   ' | sed 's/[\\"]/\\&/g')" "$temp" "$seed")
echo "\$ curl -s http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' -d '$body'"
curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" \
    || die "the HTTP API did not answer"
echo
echo "\$ pi-ctl generate --prompt \"$prompt\" -n 32"
printf '%s' "$prompt"
"$ctl" --endpoint "$ep" generate --prompt "$prompt" -n 32 --temp "$temp" --seed "$seed" \
    || die "pi-ctl generate failed"
echo "\$ pi-ctl shutdown"
"$ctl" --endpoint "$ep" shutdown || die "pi-ctl shutdown failed"
wait $cpid || die "the server exited with an error (see its log above)"
trap - EXIT
rm -rf "$run"
