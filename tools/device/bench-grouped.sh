#!/bin/bash
# The grouped down rows ([tune] down_t = grouped, kernels/cpu/quant.h) against the f16 ones on the GPU
# machine's host, CPU only (--gpu-backend none, 16 threads), with llama.cpp's CPU decode (its CUDA build
# at -ngl 0) in the same rounds, alternated:
#   STAGE=cpu13:   the 13B-shaped ReLU Q4_0 model with locality and exact predictors of
#                  tools/device/bench-handoff-13b.sh (the same generator flags and seed: the same bytes),
#                  --sparsity safe, tg32;
#   STAGE=swiglu7: the random 7B-shaped SwiGLU Q4_0 model of tools/device/bench-thresholds-7b.sh with its
#                  activation thresholds (pi-profile --threshold-sparsity 0.4,0.5; PT tokens, default 1024, in
#                  chunks of PC, default 512: at least two chunks),
#                  --sparsity off,safe,aggressive, tg32; with HYB=1 also the hybrid placement of that script
#                  (--vram-budget 2G, one CPU worker of 15 threads, tg64) against llama.cpp -ngl 13 and 15.
# Staging as tools/device/bench-sparse-7b.sh says (R=.devbench with the binaries of a CUDA build, lib/,
# llama.tar.xz); run from the source tree with OUT set: the rows in $OUT/bench.log. REPS rounds (2).
# LL=0 leaves llama.cpp out (its build is the call's longest part). TESTS=1 first runs test-backend-cuda's short-gated (R/tests/cuda and R/fx as tools/gpu-check.sh says).
# A later call on the warm machine reuses llama.cpp's build and the models in /dev/shm.
set -u
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib
T0=$(date +%s); ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/progress.txt" >> "$L"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"; } >> "$L" 2>&1
LB=/tmp/ext/lcpp/build/bin/llama-bench
BP=""
if [ "${LL:-1}" = 1 ] && [ ! -x $LB ]; then
  mkdir -p /tmp/ext && { [ -d /tmp/ext/lcpp ] || tar -C /tmp/ext -xJf "$R/llama.tar.xz"; }
  ( cd /tmp/ext/lcpp && cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/lcpp-cmake.log 2>&1 &&
    ninja -C build -j 12 llama-bench > /tmp/lcpp-build.log 2>&1; echo "llama.cpp build rc=$?" >> /tmp/lcpp-build.log ) &
  BP=$!
fi
if [ "${TESTS:-0}" = 1 ]; then
  ( export PI_SRCDIR=$PWD PI_BUILDDIR=$R PI_FIXTURES=$R/fx
    PI_CUDA_TEST=short-gated timeout 150 "$R/tests/cuda/test-backend-cuda" > "$O/test-backend-cuda.log" 2>&1
    echo "test-backend-cuda short-gated rc=$? ok=$(grep -c '^ok' "$O/test-backend-cuda.log") notok=$(grep -c '^not ok' "$O/test-backend-cuda.log")"
    grep '^not ok' "$O/test-backend-cuda.log" | head -5 ) >> "$L" 2>&1
fi
VOCAB=$PWD/tests/data/ggml-vocab-llama-spm.gguf
case "${STAGE:-cpu13}" in
cpu13)
  M=/dev/shm/m13.gguf; MP=/dev/shm/m13p.gguf
  gen() { local out=$1; shift; [ -s "$out" ] && return 0
    "$R/tools/pi-gen-model" --preset 13b --type q4_0 --locality --gate-rank 16 --vocab-from "$VOCAB" "$@" "$out.tmp" \
      > "/tmp/gen-$(basename "$out").log" 2>&1 && mv "$out.tmp" "$out"; }
  ts "gen start"; gen $M & G1=$!; gen $MP --pred-exact & G2=$!; wait $G1 $G2; ts "gen done"
  PI="$R/coordinator/pi-bench -m $MP -p 0 -n 32 -r 2 --gpu-backend none -t 16 -o md --log-level info --sparsity safe"
  LL="$LB -m $M -ngl 0 -t 16 -p 0 -n 32 -r 2 -o md" ;;
swiglu7)
  MP=/dev/shm/s7.gguf; M=$MP
  if [ ! -s /dev/shm/s7.pinfer.gguf ]; then
    ts "gen start"; "$R/tools/pi-gen-model" --preset 7b --type q4_0 --vocab-from "$VOCAB" $MP >> "$L" 2>&1
    "$R/tools/pi-profile" -m $MP --random ${PT:-1024} -c ${PC:-512} -t 16 --threshold-sparsity 0.4,0.5 > /tmp/prof.out 2> /tmp/prof.err
    ts "profile rc=$?"; grep -E "^thresholds" /tmp/prof.out >> "$L"
  fi
  PI="$R/coordinator/pi-bench -m $MP -p 0 -n 32 -r 2 --gpu-backend none -t 16 -o md --log-level info --sparsity off,safe,aggressive"
  LL="$LB -m $M -ngl 0 -t 16 -p 0 -n 32 -r 2 -o md" ;;
esac
[ -n "$BP" ] && wait $BP; tail -1 /tmp/lcpp-build.log >> "$L" 2>/dev/null
measured() { # measured NAME CMD...: the table rows and the lines that say what ran
  local name=$1; shift; local s=$(date +%s)
  echo "== $name: $*" >> "$L"
  timeout 200 "$@" > "/tmp/$name.out" 2> "/tmp/$name.err"; local rc=$?
  grep -E "^\|" "/tmp/$name.out" >> "$L"; grep -hE "sparsity|down rows|error" "/tmp/$name.err" | cut -c1-240 | head -6 >> "$L"
  echo "$name rc=$rc $(( $(date +%s) - s )) s" >> "$L"
}
mkdir -p -m 700 /tmp/pirun
PH="$R/coordinator/pi-bench -m $MP -p 0 -n 64 -r 3 --gpu-backend cuda --cpu-workers 1 -t 15 --vram-budget 2G --run-dir /tmp/pirun -o md --log-level info --sparsity off,safe,aggressive"
for r in $(seq 1 "${REPS:-2}"); do
  measured f16-r$r $PI --set tune.down_t=f16
  measured grouped-r$r $PI --set tune.down_t=grouped
  [ "${LL:-1}" = 1 ] && measured llama-r$r $LL
  if [ "${HYB:-0}" = 1 ] && [ "${STAGE:-cpu13}" = swiglu7 ]; then
    measured hyb-f16-r$r $PH --set tune.down_t=f16
    measured hyb-grouped-r$r $PH --set tune.down_t=grouped
    for ngl in 13 15; do measured ll-ngl$ngl-r$r $LB -m $M -ngl $ngl -t 16 -p 0 -n 64 -r 3 -o md; done
  fi
  ts "round $r done"
done
