#!/bin/sh
# tests/integration/test-http.sh - the HTTP API of pi-coordinator's server mode, through OpenAI's own npm client
# (installed from the npm registry into the build tree on first use) and raw requests
# (tests/integration/http-client.cjs): chat and streaming, completions, models, tokenize, logprobs, stop strings;
# 30 malformed requests; API keys; concurrent clients whose greedy answers must equal the same requests served
# alone; a client that disconnects mid-stream; kill -9 of the GPU worker during 16 streams.
# The server runs the demo model through the process pipeline (host backend, half the neurons on a CPU worker).
# PI_SANITIZED=1 (the sanitizer build) runs fewer clients for less time. The server and the clients run at
# nice 19: the load part keeps both cores busy for two minutes, and the suite's other tests (make check -j)
# have deadlines of their own.
b=${PI_BUILDDIR:-.}
src=${PI_SRCDIR:-..}
m=$src/tests/data/demo-relu-q4_0.gguf
coord=$b/coordinator/pi-coordinator
js=$src/tests/integration/http-client.cjs
pkg=$(cd "$b" && pwd)/tests/node-openai
t=$(mktemp -d /tmp/pi-http.XXXXXX)
pids=""
cleanup() { for p in $pids; do kill -TERM "$p" 2>/dev/null; done; sleep 0.5; for p in $pids; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$t"; }
trap cleanup EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }

command -v node >/dev/null || { echo "not ok 1 - node is not installed (tools/install-deps.sh installs nodejs and npm)"; echo "1..1"; exit 1; }
if [ ! -f "$pkg/node_modules/openai/package.json" ]; then
    mkdir -p "$pkg"
    timeout 300 npm install --prefix "$pkg" --no-audit --no-fund --loglevel=error openai@4.104.0 >"$t/npm.log" 2>&1
    ok $? "npm install openai@4.104.0 ($(tail -1 "$t/npm.log"))"
    [ -f "$pkg/node_modules/openai/package.json" ] || { echo "1..$n"; exit 1; }
fi

# start NAME ARGS...: a server in the background; its port in $port, its pid in $spid
start() {
    name=$1; shift
    mkdir -p -m 700 "$t/$name"
    nice -n 19 "$coord" --model "$m" --gpu-backend host --hot-fraction 0.5 --cpu-workers 1 --cpu-threads 1 --run-dir "$t/$name" \
        --http 127.0.0.1:0 --chat-template chatml --log-level info "$@" >"$t/$name.out" 2>"$t/$name.err" &
    spid=$!
    pids="$pids $spid"
    port=""
    i=0
    while [ $i -lt 600 ]; do
        port=$(sed -n 's|.*http: listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$t/$name.err" 2>/dev/null | head -1)
        if [ -n "$port" ] && grep -q "serving" "$t/$name.out"; then return 0; fi
        kill -0 $spid 2>/dev/null || break
        sleep 0.1; i=$((i + 1))
    done
    echo "# server $name did not start:"; sed 's/^/#   /' "$t/$name.err" | tail -20
    return 1
}
# run PART ARGS...: one part of the client; its TAP lines are counted as one check each
run() {
    timeout 600 nice -n 19 node "$js" "$pkg" "$@" >"$t/part.out" 2>&1
    rc=$?
    while IFS= read -r line; do
        case $line in
        "ok "*) ok 0 "$1: ${line#ok * - }" ;;
        "not ok "*) ok 1 "$1: ${line#not ok * - }" ;;
        "1.."*) ;;
        *) echo "# $line" ;;
        esac
    done <"$t/part.out"
    [ $rc = 0 ] || [ $fails -gt 0 ] || ok 1 "$1: the client exited with $rc"
}
# The GPU worker of server pid $1 (a child process named pi-gpu-worker).
gpu_worker() {
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = pi-gpu-worker ] || continue
        [ "$(awk '{print $4}' "$d/stat" 2>/dev/null)" = "$1" ] && { echo "${d#/proc/}"; return; }
    done
}

if [ "${PI_SANITIZED:-0}" = 1 ]; then clients=16; secs=20; else clients=64; secs=120; fi

# 64 clients from one address are one client: the queue leaves its reserve (server.queue_reserve, 16) to
# others, so it is sized past 64 - 16 slots + 16
if start main --set server.slots=16 --set server.queue=80; then
    url=http://127.0.0.1:$port
    run basic "$url"
    run malformed "$url"
    run concurrency "$url" $clients $secs
    run disconnect "$url"
    gpu_worker $spid >"$t/gpu.pid"
    [ -s "$t/gpu.pid" ]; ok $? "found the GPU worker ($(cat "$t/gpu.pid"))"
    run kill "$url" "$t/gpu.pid"
    timeout 20 "$b/tools/pi-ctl" --endpoint "ipc://$t/main/control.sock" ps >"$t/ps.out" 2>&1
    grep -q "^model *demo-relu-q4_0.gguf" "$t/ps.out" && grep -q "^requests *ready; running 0" "$t/ps.out" && grep -q "^workers *gpu 0: ready" "$t/ps.out"
    ok $? "pi-ctl ps: the model, the requests, the workers ($(tr '\n' '|' <"$t/ps.out" | cut -c1-300))"
    grep -q "request [0-9]*: prompt [0-9]* tokens ([0-9]* cached), generated [0-9]*, ttft" "$t/main.err"
    ok $? "one log line per request"
    [ $fails = 0 ] || { echo "# the server's log, its errors and warnings:"; grep -E " (error|warn):" "$t/main.err" | tail -30 | sed 's/^/#   /'; }
    kill -TERM $spid; wait $spid; rc=$?
    ok $rc "SIGTERM: the server ends with status 0 (rc $rc)"
else
    ok 1 "the server started"
fi

printf 'sk-test-%s\n' "$$" >"$t/keys"
chmod 600 "$t/keys"
if start auth --api-key-file "$t/keys"; then
    run auth "http://127.0.0.1:$port" "sk-test-$$"
else
    ok 1 "the server with an API key started"
fi

# the keys are the API's only authentication: a key file every local user may read is refused
cp "$t/keys" "$t/keys-open" && chmod 644 "$t/keys-open"
timeout 30 "$coord" --model "$m" --gpu-backend none --run-dir "$t/open" --http 127.0.0.1:0 --api-key-file "$t/keys-open" \
    >"$t/open.out" 2>"$t/open.err"; rc=$?
[ $rc != 0 ] && grep -q "other users may not read" "$t/open.err"
ok $? "an API key file others may read is refused (rc $rc): $(head -c 200 "$t/open.err")"

timeout 30 "$coord" --model "$m" --gpu-backend none --run-dir "$t/off" --http 0.0.0.0:0 >"$t/off.out" 2>"$t/off.err"; rc=$?
[ $rc != 0 ] && grep -q "reachable from the network and no API key" "$t/off.err"
ok $? "listening off the loopback without a key is refused (rc $rc)"

echo "1..$n"
[ $fails = 0 ]
