#!/bin/sh
# tools/check-layers.sh - checks that the source floors only look down (doc/design.md, "Floors"):
# every `#include "DIR/..."` of a file in a folder must name a folder that folder may use. Prints
# each upward or sideways include, in "" or <> form, as FILE:LINE: message and exits 1 when there is one, 0 otherwise.
# Run by `make check` (tests/unit/test-layers.sh) and by hand: tools/check-layers.sh [SRCDIR].
#
#   floor 0  lib/                        includes nothing above it
#   floor 1  kernels/, ipc/              lib/ (kernels/cuda may use kernels/cpu's headers, not the reverse)
#   floor 2  model/                      lib/, kernels/
#   floor 3  text/                       lib/, model/
#   floor 3  compute/                    lib/, kernels/, ipc/, model/
#   floor 4  coordinator/, gpu-worker/, cpu-worker/, tools/: any floor below, never another program
#   tests/   anything
set -u
src=${1:-$(dirname "$0")/..}
cd "$src" || exit 2
allowed() { # folder (kernels: its subfolder) -> the folders its files may include
    case $1 in
    lib) echo "lib" ;;
    kernels/cpu) echo "lib kernels/cpu" ;;
    kernels/cuda) echo "lib kernels/cpu kernels/cuda" ;;
    ipc) echo "lib ipc" ;;
    model) echo "lib kernels/cpu kernels/cuda model" ;;
    text) echo "lib model text" ;;
    compute) echo "lib kernels/cpu kernels/cuda ipc model compute" ;;
    coordinator | gpu-worker | cpu-worker | tools) echo "lib kernels/cpu kernels/cuda ipc model text compute $1" ;;
    esac
}
# the project's folders: an include naming anything else ("config.h", <sys/stat.h>) is not checked
ours=" lib kernels ipc model text compute coordinator gpu-worker cpu-worker tools tests "
out="${TMPDIR:-/tmp}/pi-layers.$$"
for dir in lib kernels/cpu kernels/cuda ipc model text compute coordinator gpu-worker cpu-worker tools; do
    [ -d "$dir" ] || continue
    ok=$(allowed "$dir")
    for f in $(find "$dir" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) | sort); do
        # "DIR/NAME" and <DIR/NAME> alike (both resolve through -I$(top_srcdir))
        grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<][^">/]*/' "$f" | while IFS= read -r hit; do
            line=${hit%%:*}
            path=$(printf '%s\n' "$hit" | sed 's/.*include[[:space:]]*["<]\([^">]*\)[">].*/\1/')
            top=${path%%/*}
            case "$ours" in *" $top "*) ;; *) continue ;; esac
            target=$top
            [ "$top" = kernels ] && target=$(printf '%s\n' "$path" | cut -d/ -f1-2)
            case " $ok " in *" $target "*) ;; *)
                echo "$f:$line: includes $target/ (a $dir/ file may include only: $ok)" ;;
            esac
        done
    done
done > "$out"
bad=0
if [ -s "$out" ]; then cat "$out"; bad=1; fi
rm -f "$out"
exit $bad
