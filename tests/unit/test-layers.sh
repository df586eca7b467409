#!/bin/sh
# tests/unit/test-layers.sh - the source tree's floors only look down (tools/check-layers.sh, doc/design.md
# "Floors"): the tree itself passes, and copies with a planted upward include (kernels/ including
# model/, in "" and <> form), kernels/cpu including kernels/cuda, and a program including another
# program's folder are all caught. TAP output.
SRC=${PI_SRCDIR:-.}
CHECK=$SRC/tools/check-layers.sh
T=$(mktemp -d "${TMPDIR:-/tmp}/test-layers.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
trap 'rm -rf "$T"' EXIT
n=0
ok() { # ok STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}
echo "1..7"
out=$(sh "$CHECK" "$SRC" 2>&1); st=$?
[ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/# /'
ok $st "the tree's includes only look down"

mkdir -p "$T/t/kernels/cpu" "$T/t/lib" "$T/t/model" "$T/t/gpu-worker" "$T/t/cpu-worker"
printf '#include "lib/common.h"\n' > "$T/t/kernels/cpu/a.c"
printf '#include "lib/common.h"\n' > "$T/t/lib/common.h"
sh "$CHECK" "$T/t" >/dev/null 2>&1
ok $? "a clean tree passes"
printf '#include "lib/common.h"\n#include "model/model.h"\n' > "$T/t/kernels/cpu/a.c"
out=$(sh "$CHECK" "$T/t" 2>&1); st=$?
[ $st -eq 1 ]; ok $? "kernels/ including model/ fails"
case $out in *"kernels/cpu/a.c:2: includes model/"*) r=0 ;; *) r=1 ;; esac
ok $r "the message names the file, line and folder"
printf '#include <sys/stat.h>\n#include <model/model.h>\n' > "$T/t/kernels/cpu/a.c"
out=$(sh "$CHECK" "$T/t" 2>&1); st=$?
case $out in *"kernels/cpu/a.c:2: includes model/"*) r=$st ;; *) r=0 ;; esac
[ "$r" -eq 1 ]; ok $? "an upward include in <> form fails too (a system header does not)"
printf '#include "kernels/cuda/cuda.h"\n' > "$T/t/kernels/cpu/a.c"
sh "$CHECK" "$T/t" >/dev/null 2>&1
[ $? -eq 1 ]; ok $? "kernels/cpu including kernels/cuda fails"
printf '#include "lib/common.h"\n' > "$T/t/kernels/cpu/a.c"
printf '#include "cpu-worker/x.h"\n' > "$T/t/gpu-worker/main.c"
sh "$CHECK" "$T/t" >/dev/null 2>&1
[ $? -eq 1 ]; ok $? "a program including another program's folder fails"
