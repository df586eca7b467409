#!/bin/sh
# tests/integration/test-service.sh - the packaging (data/Makemodule.am, pinfer.service(8)): the unit made from
# data/pinfer.service.in has every directory filled in, runs pi-coordinator with options that exist, restarts on
# failure, has the hardening the page lists and no MemoryDenyWriteExecute (the CUDA driver JITs); systemd-analyze
# verify has nothing to say about it (skipped without systemd-analyze); the example configuration, indented as
# shipped, is one pi-coordinator reads (a one-shot run on the demo model with only the model and backend
# overridden). TAP output.
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
echo "1..$n"
[ $fails = 0 ]
