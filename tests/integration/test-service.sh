#!/bin/sh
# tests/integration/test-service.sh - the packaging (data/Makemodule.am, pinfer.service(8)): the unit made from
# data/pinfer.service.in has every directory filled in, runs pi-coordinator with options that exist, restarts on
# failure, has the hardening the page lists and no MemoryDenyWriteExecute (the CUDA driver JITs); systemd-analyze
# verify has nothing to say about it (skipped without systemd-analyze); the example configuration, indented as
# shipped, is one pi-coordinator reads (a one-shot run on the demo model with only the model and backend
# overridden); in server mode the readiness protocol (sd_notify) reaches a stand-in for systemd's socket
# (tests/integration/notify-listen). TAP output.
b=${PI_BUILDDIR:-.}
s=${PI_SRCDIR:-..}
u=$b/data/pinfer.service
ex=$s/data/pinfer.conf.example
m=$s/tests/data/demo-relu-q4_0.gguf
coord=$b/coordinator/pi-coordinator
t=$(mktemp -d /tmp/pi-service.XXXXXX)
trap 'rm -rf "$t"' EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
skip() { n=$((n + 1)); echo "ok $n # SKIP $1"; }
key() { sed -n "s/^$1=//p" "$u"; } # the value of a key of the unit (all of them when repeated)

[ -f "$u" ] || { echo "Bail out! $u was not made (make all makes it)"; exit 1; }
! grep -q '@[a-z]*@' "$u"
ok $? "every @dir@ of pinfer.service.in is filled in"
exec_start=$(key ExecStart)
case "$exec_start" in
/*/pi-coordinator\ --config\ /*/pinfer/pinfer.conf) r=0 ;;
*) r=1 ;;
esac
ok $r "ExecStart runs pi-coordinator --config .../pinfer/pinfer.conf ($exec_start)"
conf=${exec_start##* }
[ "$(key ConditionPathExists)" = "$conf" ]
ok $? "it starts only when that file exists (ConditionPathExists=$(key ConditionPathExists))"
# the options of ExecStart are pi-coordinator's: the same command with the build's program, a model and a prompt
cfg=$t/pinfer.conf
sed 's|^\( *\)path = .*|\1path = '"$m"'|; s|^\( *\)backend = .*|\1backend = none|; s|^\( *\)dir = .*|\1dir = '"$t"'|' "$ex" >"$cfg"
args=$(echo "$exec_start" | sed 's|^[^ ]* ||; s|--config [^ ]*|--config '"$cfg"'|')
timeout 60 "$coord" $args -p "The jury" -n 4 --temp 0 >"$t/out" 2>"$t/err"; rc=$?
[ $rc = 0 ] && [ -s "$t/out" ]
ok $? "ExecStart's options with the example configuration (model, backend and run dir set) run pi-coordinator (status $rc: $(tail -1 "$t/err"))"
grep -q '^ \{2,\}[a-z_]* = ' "$ex" && grep -q '^ \{2,\}#' "$ex"
ok $? "the example is indented (keys and comments), as pinfer.conf(5) allows"
[ "$(key Type)" = notify ] && [ "$(key NotifyAccess)" = main ] && [ -n "$(key TimeoutStartSec)" ]
ok $? "Type=notify, NotifyAccess=main, TimeoutStartSec set (readiness below)"
[ "$(key Restart)" = on-failure ] && [ "$(key User)" = pinfer ] && [ "$(key RuntimeDirectory)" = pinfer ] &&
    [ "$(key RuntimeDirectoryMode)" = 0700 ]
ok $? "Restart=on-failure, User=pinfer, RuntimeDirectory=pinfer (0700)"
grep -q '^ *dir = /run/pinfer$' "$ex"
ok $? "the example puts [run] dir in the unit's RuntimeDirectory"
missing=
for kv in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=read-only PrivateTmp=yes ProtectKernelTunables=yes \
    ProtectKernelModules=yes ProtectControlGroups=yes "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" \
    RestrictNamespaces=yes LockPersonality=yes; do
    grep -qx "$kv" "$u" || missing="$missing $kv"
done
[ -z "$missing" ]
ok $? "hardening:${missing:- all there}"
! grep -q '^MemoryDenyWriteExecute' "$u" && grep -q 'MemoryDenyWriteExecute= is left' "$u"
ok $? "no MemoryDenyWriteExecute (the CUDA driver JITs), and the unit says why"
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify needs the program to exist: the build's stands in for the installed one
    mkdir -p "$t/unit"
    sed "s|^ExecStart=[^ ]*|ExecStart=$(cd "$b" && pwd)/coordinator/pi-coordinator|" "$u" >"$t/unit/pinfer.service"
    systemd-analyze verify --man=no "$t/unit/pinfer.service" >"$t/verify" 2>&1; rc=$?
    sed 's/^/# /' "$t/verify"
    [ $rc = 0 ] && [ ! -s "$t/verify" ]
    ok $? "systemd-analyze verify: no message (status $rc)"
    printf '[Service]\nExecStart=/bin/true\nRestart=sometimes\n' >"$t/unit/bad.service"
    systemd-analyze verify --man=no "$t/unit/bad.service" >"$t/verify" 2>&1
    [ -s "$t/verify" ]
    ok $? "systemd-analyze verify does report a bad unit (the check can fail)"
else
    skip "systemd-analyze not installed"
    skip "systemd-analyze not installed"
fi
# readiness: in server mode pi-coordinator tells systemd's notification socket (NOTIFY_SOCKET) what it
# does, READY=1 once it serves and STOPPING=1 on SIGTERM; its workers do not inherit the variable
nl=$b/tests/integration/notify-listen
"$nl" "$t/notify.sock" 90 >"$t/notify.out" 2>&1 &
lp=$!
for _ in $(seq 50); do [ -S "$t/notify.sock" ] && break; sleep 0.1; done
mkdir -p -m 700 "$t/srv"
NOTIFY_SOCKET=$t/notify.sock timeout 80 "$coord" --model "$m" --gpu-backend host --hot-fraction 0.5 --cpu-workers 1 \
    --cpu-threads 1 --run-dir "$t/srv" --http off >"$t/srv.out" 2>"$t/srv.err" &
sp=$!
for _ in $(seq 600); do grep -q 'READY=1' "$t/notify.out" && break; kill -0 $sp 2>/dev/null || break; sleep 0.1; done
sed 's/^/# notify: /' "$t/notify.out"
head -1 "$t/notify.out" | grep -q '^STATUS=reading the model$' && grep -q '^STATUS=starting the workers' "$t/notify.out" &&
    grep -q "^READY=1|STATUS=serving $m (control ipc://" "$t/notify.out"
ok $? "sd_notify: STATUS while loading, then READY=1 with STATUS=serving"
inherited=0 workers=0
cp=$(pgrep -P $sp | head -1) # sp is timeout; its child the coordinator, whose children the workers
for w in $(pgrep -P "${cp:-0}"); do
    workers=$((workers + 1))
    tr '\0' '\n' <"/proc/$w/environ" 2>/dev/null | grep -q '^NOTIFY_SOCKET=' && inherited=$((inherited + 1))
done
[ $workers -ge 2 ] && [ $inherited = 0 ]
ok $? "the $workers worker processes do not inherit NOTIFY_SOCKET ($inherited do)"
kill -TERM $sp
wait $sp; rc=$?
wait $lp; lrc=$?
[ $rc = 0 ] && [ $lrc = 0 ] && grep -q '^STOPPING=1' "$t/notify.out"
ok $? "SIGTERM: STOPPING=1 sent, exit status $rc"
NOTIFY_SOCKET=relative/path timeout 30 "$coord" --model "$m" --gpu-backend none --run-dir "$t/srv" --http off \
    >"$t/srv2.out" 2>"$t/srv2.err" &
sp=$!
for _ in $(seq 300); do grep -q 'serving' "$t/srv2.out" && break; kill -0 $sp 2>/dev/null || break; sleep 0.1; done
kill -TERM $sp
wait $sp; rc=$?
[ $rc = 0 ] && [ "$(grep -c 'NOTIFY_SOCKET' "$t/srv2.err")" = 1 ]
ok $? "a NOTIFY_SOCKET that is not an absolute path: one warning, and it serves anyway (status $rc)"
echo "1..$n"
[ $fails = 0 ]
