#!/bin/sh
# tests/integration/test-linkage.sh - which files link CUDA (doc/design.md, "Build"): no program does.
# pi-coordinator, pi-cpu-worker and the tools run no CUDA code (the coordinator sizes the hot set with
# the cuda backend's VRAM plan, which is host C: compute/backend-cuda-plan.c), and pi-gpu-worker loads
# the cuda backend, the only thing that needs cudart and cuBLAS, as the module pinfer-cuda.so when it
# is asked for (compute/backend-cuda-module.h; issue 20: a host run no longer maps 200 MB of cuBLAS).
# Where the cuda backend is built: the module links both, and every pi_* symbol it needs from the
# program is exported by pi-gpu-worker and by pi-train-predictors, which loads the module for its cuda
# training engine (else dlopen fails at run time: "undefined symbol").
# Reads DT_NEEDED entries with readelf and the dynamic symbols with nm; skips when readelf is
# missing. TAP output.
B=${PI_BUILDDIR:-.}
if ! command -v readelf >/dev/null 2>&1; then echo "1..0 # SKIP readelf not found"; exit 0; fi
n=0
ok() { # ok STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}
needed() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p'; }
echo "1..8"
for p in coordinator/pi-coordinator cpu-worker/pi-cpu-worker tools/pi-ctl gpu-worker/pi-gpu-worker \
    tools/pi-train-predictors; do
    if [ ! -x "$B/$p" ]; then ok 1 "$p built"; continue; fi
    cuda=$(needed "$B/$p" | grep -E '^lib(cudart|cublas|cublasLt)\.' | tr '\n' ' ')
    [ -z "$cuda" ]; ok $? "$p links neither cudart nor cuBLAS${cuda:+ (it needs: $cuda)}"
done
mod=$B/compute/pinfer-cuda.so
if grep -q '^#define PI_HAVE_CUDA 1' "$B/config.h" 2>/dev/null; then
    libs=$(needed "$mod")
    case $libs in *libcudart*) c=0 ;; *) c=1 ;; esac
    case $libs in *libcublas*) b=0 ;; *) b=1 ;; esac
    [ $c -eq 0 ] && [ $b -eq 0 ]; ok $? "pinfer-cuda.so links cudart and cuBLAS (the cuda backend)"
    if command -v nm >/dev/null 2>&1; then
        want=$(nm -D --undefined-only "$mod" | sed -n 's/^ *U \(pi_[A-Za-z0-9_]*\)$/\1/p' | sort -u)
        have=${TMPDIR:-/tmp}/pi-linkage.$$
        for p in gpu-worker/pi-gpu-worker tools/pi-train-predictors; do
            nm -D --defined-only "$B/$p" | awk '{print $3}' | sort -u > "$have"
            missing=$(printf '%s\n' "$want" | comm -23 - "$have" | tr '\n' ' ')
            [ -n "$want" ] && [ -z "$missing" ]; ok $? "${p#*/} exports the $(printf '%s\n' "$want" | wc -l) pi_* symbols the module takes from it${missing:+ (missing: $missing)}"
        done
        rm -f "$have"
    else
        n=$((n + 1)); echo "ok $n - # SKIP nm not found"
        n=$((n + 1)); echo "ok $n - # SKIP nm not found"
    fi
else
    n=$((n + 1)); echo "ok $n - # SKIP built without the cuda backend"
    n=$((n + 1)); echo "ok $n - # SKIP built without the cuda backend"
    n=$((n + 1)); echo "ok $n - # SKIP built without the cuda backend"
fi
