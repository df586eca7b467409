#!/bin/sh
# tests/integration/test-linkage.sh - which programs link CUDA (doc/design.md, "Build"): pi-coordinator, pi-cpu-worker
# and the tools that run no CUDA code need neither cudart nor cuBLAS (the coordinator sizes the hot set
# with the cuda backend's VRAM plan, which is host C: compute/backend-cuda-plan.c), and where the cuda
# backend is built, pi-gpu-worker does need both. Reads the programs' DT_NEEDED entries with readelf;
# skips when readelf is missing. TAP output.
B=${PI_BUILDDIR:-.}
if ! command -v readelf >/dev/null 2>&1; then echo "1..0 # SKIP readelf not found"; exit 0; fi
n=0
ok() { # ok STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}
needed() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p'; }
echo "1..4"
for p in coordinator/pi-coordinator cpu-worker/pi-cpu-worker tools/pi-ctl; do
    if [ ! -x "$B/$p" ]; then ok 1 "$p built"; continue; fi
    cuda=$(needed "$B/$p" | grep -E '^lib(cudart|cublas|cublasLt)\.' | tr '\n' ' ')
    [ -z "$cuda" ]; ok $? "$p links neither cudart nor cuBLAS${cuda:+ (it needs: $cuda)}"
done
gw=$B/gpu-worker/pi-gpu-worker
if grep -q '^#define PI_HAVE_CUDA 1' "$B/config.h" 2>/dev/null; then
    libs=$(needed "$gw")
    case $libs in *libcudart*) c=0 ;; *) c=1 ;; esac
    case $libs in *libcublas*) b=0 ;; *) b=1 ;; esac
    [ $c -eq 0 ] && [ $b -eq 0 ]; ok $? "pi-gpu-worker links cudart and cuBLAS (the cuda backend)"
else
    n=$((n + 1)); echo "ok $n - # SKIP built without the cuda backend"
fi
