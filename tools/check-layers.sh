#!/bin/sh
# tools/check-layers.sh - checks that the source floors only look down (doc/design.md, "Floors"):
# every `#include "DIR/..."` of a file in a folder must name a folder that folder may use. Prints
# each upward or sideways include as FILE:LINE: message and exits 1 when there is one, 0 otherwise.
# Run by `make check` (tests/unit/test-layers.sh) and by hand: tools/check-layers.sh [SRCDIR].
#
#   floor 0  lib/                        includes nothing above it
#   floor 1  kernels/, ipc/              lib/ (kernels/cuda may use kernels/cpu's headers)
#   floor 2  model/                      lib/, kernels/
#   floor 3  text/                       lib/, model/
#   floor 3  compute/                    lib/, kernels/, ipc/, model/
#   floor 4  coordinator/, gpu-worker/, cpu-worker/, tools/: any floor below, never another program
#   tests/   anything
set -u
src=${1:-$(dirname "$0")/..}
cd "$src" || exit 2
allowed() { # folder -> the folders its files may include
    case $1 in
    lib) echo "lib" ;;
    kernels) echo "lib kernels" ;;
    ipc) echo "lib ipc" ;;
    model) echo "lib kernels model" ;;
    text) echo "lib model text" ;;
    compute) echo "lib kernels ipc model compute" ;;
    coordinator | gpu-worker | cpu-worker | tools) echo "lib kernels ipc model text compute $1" ;;
    *) echo "*" ;;
    esac
}
bad=0
for dir in lib kernels ipc model text compute coordinator gpu-worker cpu-worker tools; do
    ok=$(allowed "$dir")
    for f in $(find "$dir" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) | sort); do
        # "DIR/NAME" includes only; "config.h" (configure's) carries no folder
        grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^"/]*/' "$f" | while IFS= read -r hit; do
            line=${hit%%:*}
            target=$(printf '%s\n' "$hit" | sed 's/.*include[[:space:]]*"\([^"/]*\)\/.*/\1/')
            case " $ok " in *" $target "*) ;; *)
                echo "$f:$line: includes $target/ (a $dir/ file may include only: $ok)" ;;
            esac
        done
    done
done > "${TMPDIR:-/tmp}/pi-layers.$$"
if [ -s "${TMPDIR:-/tmp}/pi-layers.$$" ]; then cat "${TMPDIR:-/tmp}/pi-layers.$$"; bad=1; fi
rm -f "${TMPDIR:-/tmp}/pi-layers.$$"
exit $bad
