#!/bin/bash
# Issue 17's 70B row on the GPU machine: decode of a 70B-shaped ReLU model with predictors, pinfer
# (`--sparsity safe` and dense) at a 12 GiB VRAM budget against llama.cpp at its largest -ngl under
# pinfer's peak and PowerInfer on the same weights and budget; then each on the CPU alone.
#
# The weights, as bench-sparse-13b.sh's at the 70b preset (`pi-gen-model --preset 70b --type q4_0
# --locality --gate-rank 16`, one seed, three layouts of the same tensors: pinfer's with `--pred-exact`,
# llama.cpp's plain, PowerInfer's PWRI). Each file is about 39 GB, and the machine has 64 GiB of disk and
# 125 GiB of memory, of which /dev/shm takes at most half: so the engines run one after another, each
# file written into /dev/shm and deleted at the start of the next engine's stage (one device call each
# on a warm machine; /dev/shm, the profile and the builds in /tmp/ext survive between calls):
#   prep        writes pinfer's file, profiles it (PT random tokens, default 256), writes PowerInfer's
#               GPU index from that profile (pi-place at the same budget);
#   pinfer      pinfer hybrid (safe), CPU-only (safe), hybrid dense (off), the 16-row packed copies off
#               (`tune.cpu_pack=off`: about 18 GB less host memory beside the 39 GB file);
#   llama       deletes pinfer's file, builds llama.cpp while it writes the plain file, runs llama-bench
#               at -ngl NGL (a list, default 20,22,24: the pinfer stage's peak says which is the same
#               VRAM) and -ngl 0;
#   powerinfer  deletes the plain file, builds PowerInfer while it writes the PWRI file, runs it at
#               --vram-budget 12 and 0, deletes it.
# Every stage first removes half-written files (*.gguf.tmp) a killed call left, and logs the memory
# after each run. Builds never overlap a measured run.
# usage: bench-sparse-70b.sh STAGE [SECONDS]   (default 570: what does not fit is skipped and logged)
# Knobs: PT=N profile tokens; NGL=list; N=tokens decoded (32 on the GPU, 16 on the CPU alone);
# SMOKE=1 runs the same flow on a 1B-shaped model with the host backend (this script's check on a machine
# without a GPU: its figures mean nothing; llama.cpp and PowerInfer runs are skipped).
# Staging (on the build machine): as bench-sparse-13b.sh (R with a CUDA build's coordinator/{pi-bench,
# pi-coordinator}, gpu-worker/, cpu-worker/, compute/pinfer-cuda.so, tools/{pi-gen-model,pi-profile,
# pi-place}, lib/, llama.tar.xz, pwi.tar.xz), sent as one .devbench/bundle.tar.xz. Run from the source
# tree: mkdir -p /tmp/R && tar -C /tmp/R -xJf .devbench/bundle.tar.xz && R=/tmp/R OUT=... bash
# tools/device/bench-sparse-70b.sh pinfer; results in $OUT/bench.log, peaks in $OUT/vram.txt.
set -u
STAGE=${1:?usage: bench-sparse-70b.sh prep|pinfer|llama|powerinfer [SECONDS]}
R=${R:-$PWD/.devbench}; O=${OUT:-/tmp/o}; mkdir -p "$O"; L=$O/bench.log
export LD_LIBRARY_PATH=$R/lib
BUDGET=${2:-570}
T0=$(date +%s)
ts() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/progress.txt" >> "$L"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
{ echo "stage $STAGE"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  lscpu | grep "Model name"; free -g | head -2; df -h /dev/shm /tmp | tail -2; } >> "$L" 2>&1

SMOKE=${SMOKE:-0}; PRESET=70b; BE=cuda; TH=15; TC=16; VB="--vram-budget 12G"; PV=12; D=/dev/shm
[ "$SMOKE" = 1 ] && { PRESET=1b; BE=host; TH=1; TC=2; VB="--hot-fraction 0.3"; D=/tmp; }
M=$D/m70.gguf; MP=$D/m70p.gguf; MW=$D/m70.powerinfer.gguf; SC=$D/m70p.pinfer.gguf; IDX=$D/m70.gpuidx
LB=/tmp/ext/lcpp/build/bin/llama-bench
PM=/tmp/ext/pwi/build/bin/main
N=${N:-32}

gen() { # gen OUT [FLAGS...]: one model, written to a temporary name first; its time in the log
  local out=$1; shift
  [ -s "$out" ] && return 0
  local s=$(date +%s) lim=$(( $(left) - 20 ))
  [ $lim -ge 1 ] || lim=1
  timeout $lim "$R/tools/pi-gen-model" --preset $PRESET --type q4_0 --locality --gate-rank 16 \
      --vocab-from "$PWD/tests/data/ggml-vocab-llama-spm.gguf" "$@" "$out.tmp" > "/tmp/gen-$(basename "$out").log" 2>&1 &&
    mv "$out.tmp" "$out" || rm -f "$out.tmp"
  ts "gen $(basename "$out") $( [ -s "$out" ] && echo ok || echo FAILED) $(( $(date +%s) - s )) s, $(stat -c %s "$out" 2>/dev/null) bytes"
}
poll() { while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.1; done; }
# measured NAME SECONDS CMD...: CMD with the VRAM poll, at most SECONDS (skipped when fewer than
# SECONDS + 10 s are left); its table rows, placement, sparsity and timing lines into the log.
measured() {
  local name=$1 secs=$2; shift 2
  if [ "$(left)" -lt $(( secs + 10 )) ]; then echo "== $name: skipped ($(left) s left)" >> "$L"; return; fi
  poll > /tmp/poll-$name.txt 2>/dev/null & local pp=$!
  echo "== $name: $*" >> "$L"
  local s=$(date +%s)
  timeout "$secs" "$@" > /tmp/$name.out 2> /tmp/$name.err; local rc=$?
  kill $pp; wait $pp 2>/dev/null
  grep -E "^\|" /tmp/$name.out >> "$L"
  grep -hE "placement|sparsity|exchange:|masked one-token|error|eval time|offloaded|VRAM|split" /tmp/$name.out /tmp/$name.err |
    cut -c1-300 | head -16 >> "$L"
  echo "$name rc=$rc peak_mib=$(sort -n /tmp/poll-$name.txt | tail -1) $(( $(date +%s) - s )) s" | tee -a "$O/vram.txt" >> "$L"
  free -g | sed -n 2p >> "$L"
}
BP=""
build() { # build DIR TARBALL TARGET JOBS CMAKE_FLAGS...: one engine from source, in the background (BP)
  local dir=$1 tarball=$2 target=$3 jobs=$4; shift 4
  [ "$SMOKE" = 1 ] || [ -x "/tmp/ext/$dir/build/bin/$target" ] && return 0
  mkdir -p /tmp/ext; [ -d "/tmp/ext/$dir" ] || tar -C /tmp/ext -xJf "$R/$tarball"
  ( cd "/tmp/ext/$dir" && cmake -B build -G Ninja "$@" -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
      -DCMAKE_BUILD_TYPE=Release > "/tmp/$dir-cmake.log" 2>&1 &&
    ninja -C build -j "$jobs" "$target" > "/tmp/$dir-build.log" 2>&1; echo "$dir build rc=$?" >> "/tmp/$dir-build.log" ) \
    > /dev/null 2>&1 &
  BP=$!
}
built() { # built DIR: wait for the build started by build (nothing measured runs beside it)
  [ -n "$BP" ] && { wait "$BP"; ts "$(tail -1 "/tmp/$1-build.log" 2>/dev/null)"; }
  BP=""
}
rm -f $D/*.gguf.tmp

case $STAGE in
prep)
  gen $MP --pred-exact
  if [ ! -s $SC ]; then
    s=$(date +%s)
    "$R/tools/pi-profile" -m $MP --random ${PT:-256} -c ${PT:-256} -t $(( TC < 12 ? TC : 12 )) --sidecar $SC > /tmp/profile.log 2>&1
    ts "profile rc=$? $(( $(date +%s) - s )) s"; tail -2 /tmp/profile.log >> "$L"
  fi
  # PowerInfer's GPU index from the same profile at pinfer's budget (its own budget then decides how
  # much of the index it loads: bench-sparse-13b.sh, doc/predictors.md)
  [ -s $IDX ] || { "$R/tools/pi-place" -m $MP --sidecar $SC $VB --ctx 512 -q -o $IDX >> "$L" 2>&1; ts "pi-place rc=$?"; }
  ;;
pinfer)
  [ -s $MP ] || { echo "== no $MP: run the prep stage first" >> "$L"; exit 1; }
  PB="$R/coordinator/pi-bench -m $MP -p 0 -r 2 -o md --log-level info --run-dir /tmp/pirun --set tune.cpu_pack=off"
  mkdir -p -m 700 /tmp/pirun
  # the 13B worker took 42 s from start to ready; this one holds about 6.6x its cold bytes
  measured pi12-safe 400 $PB -n $N --gpu-backend $BE --cpu-workers 1 -t $TH $VB --sparsity safe
  measured pi-cpu 200 $PB -n ${N_CPU:-16} --gpu-backend none -t $TC --sparsity safe
  measured pi12-off 300 $PB -n 8 --gpu-backend $BE --cpu-workers 1 -t $TH $VB --sparsity off
  ;;
llama)
  rm -f $MP
  build lcpp llama.tar.xz llama-bench 14 -DGGML_CUDA=ON -DLLAMA_CURL=OFF
  [ "$SMOKE" = 1 ] || gen $M
  built lcpp
  if [ -x $LB ] && [ -s $M ]; then
    measured ll-ngl 300 $LB -m $M -ngl ${NGL:-20,22,24} -t 16 -p 0 -n $N -r 2 -o md
    measured ll-cpu 150 $LB -m $M -ngl 0 -t 16 -p 0 -n ${N_CPU:-16} -r 1 -o md
  else
    echo "== llama.cpp: no build or no model" >> "$L"
  fi
  ;;
powerinfer)
  rm -f $MP $M
  build pwi pwi.tar.xz main 14 -DLLAMA_CUBLAS=ON
  [ "$SMOKE" = 1 ] || { gen $MW --pred-exact --powerinfer; cp $IDX $MW.generated.gpuidx 2>/dev/null; }
  built pwi
  if [ -x $PM ] && [ -s $MW ]; then
    measured pw12 240 bash -c "$PM -m $MW -t 16 -n $N -p 'Once upon a time' --ignore-eos --seed 1 --vram-budget $PV"
    measured pw-cpu 150 bash -c "$PM -m $MW -t 16 -n ${N_CPU:-16} -p 'Once upon a time' --ignore-eos --seed 1 --vram-budget 0"
  else
    echo "== PowerInfer: no build or no model" >> "$L"
  fi
  rm -f $MW $MW.generated.gpuidx
  ;;
*) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
ts "stage $STAGE done"
