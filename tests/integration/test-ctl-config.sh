#!/bin/sh
# tests/integration/test-ctl-config.sh - pi-ctl --config and the [generate] defaults of server requests (issue 19):
# a server-mode pi-coordinator on the demo model (in-process engine) reads a configuration with [run] dir and
# [generate] n_predict / temperature; pi-ctl --config finds its socket from the same file (no --endpoint), a
# request without -n generates the configuration's n_predict tokens (pi-ctl's own fixed 128 won before), one
# with -n its own, the configuration's temperature 0 makes two requests without --seed the same text, and
# --endpoint still wins over --config. TAP output.
b=${PI_BUILDDIR:-.}
m=${PI_SRCDIR:-..}/tests/data/demo-relu-q4_0.gguf
coord=$b/coordinator/pi-coordinator
ctl=$b/tools/pi-ctl
t=$(mktemp -d /tmp/pi-ctl-config.XXXXXX)
srv=
trap '[ -n "$srv" ] && kill $srv 2>/dev/null; rm -rf "$t"' EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
mkdir -m 0700 "$t/run"
cat >"$t/pinfer.conf" <<CONF
[model]
  path = $m
[gpu]
  backend = none
[run]
  dir = $t/run
[http]
  listen = off
[generate]
  n_predict = 7
  temperature = 0
CONF
# tokens_generated of the status
generated() { "$ctl" --config "$t/pinfer.conf" status | sed -n 's/.*"tokens_generated": \([0-9]*\).*/\1/p'; }

timeout 120 "$coord" --config "$t/pinfer.conf" -t 1 --log-level warn >"$t/srv.out" 2>"$t/srv.err" &
srv=$!
up=1
for _ in $(seq 100); do
    "$ctl" --config "$t/pinfer.conf" --timeout 500 status >/dev/null 2>&1 && { up=0; break; }
    kill -0 $srv 2>/dev/null || break
    sleep 0.1
done
ok $up "pi-ctl --config finds the server's socket in its [run] dir ($(cat "$t/srv.err"))"
"$ctl" --config "$t/pinfer.conf" generate --prompt "The jury said" >"$t/g1" 2>&1; rc=$?
g=$(generated)
[ $rc = 0 ] && [ "$g" = 7 ]
ok $? "generate without -n: the configuration's n_predict, 7 tokens (status $rc, $g generated)"
"$ctl" --config "$t/pinfer.conf" generate --prompt "The jury said" -n 3 >/dev/null 2>&1; rc=$?
g=$(generated)
[ $rc = 0 ] && [ "$g" = 10 ]
ok $? "generate -n 3: its own, 3 more ($g in all)"
"$ctl" --config "$t/pinfer.conf" generate --prompt "The jury said" >"$t/g2" 2>&1
[ -s "$t/g1" ] && cmp -s "$t/g1" "$t/g2"
ok $? "two requests without --temp and --seed: the configuration's temperature 0, the same text ($(cat "$t/g1"))"
"$ctl" --config "$t/pinfer.conf" --endpoint "ipc://$t/nowhere.sock" --timeout 500 status >/dev/null 2>"$t/err"; rc=$?
[ $rc = 1 ] && grep -q "nowhere.sock" "$t/err"
ok $? "--endpoint wins over --config (status $rc: $(cat "$t/err"))"
printf '[bogus]\nx = 1\n' >"$t/bad.conf"
"$ctl" --config "$t/bad.conf" status >/dev/null 2>"$t/err"; rc=$?
[ $rc = 2 ] && grep -q "bad.conf:2: unknown section \[bogus\]" "$t/err"
ok $? "a bad --config: status 2, $(cat "$t/err")"
"$ctl" --config "$t/pinfer.conf" shutdown >/dev/null 2>&1
wait $srv; rc=$?
srv=
[ $rc = 0 ]
ok $? "the server shuts down (status $rc)"
echo "1..$n"
[ $fails = 0 ]
