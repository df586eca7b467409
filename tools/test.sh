#!/bin/bash
# tools/test.sh - the README's test command: installs what the build needs (Debian 12, as root),
# bootstraps, configures, builds and runs the whole suite, then prints "N passed, N failed".
#
# Runs, each in its own build tree under build-test/:
#   release    ./configure --enable-werror           make check  (CUDA compiled where nvcc exists)
#   sanitizers ./configure --enable-sanitizers ...   make check  (ASan + UBSan, no CUDA)
#   distcheck  make distcheck                        (the tarball builds and passes its own check)
#   fuzz       make fuzz FUZZ_TIME=15 FUZZ_TIME_SMALL=15 in the release tree: the libFuzzer targets
#              (GGUF reader, config parser, control messages, placement wire form, sidecar reader,
#              tokenizer, OpenAI request bodies) for a short fixed time each, any
#              finding a failure; skipped where clang cannot build a libFuzzer binary
# Set PI_TEST_QUICK=1 to run only the release pass. Exits non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

log() { printf '== %s\n' "$*"; }

# ---- dependencies (tools/install-deps.sh installs only what is missing)
bash tools/install-deps.sh || exit 2

log "bootstrap"
./autogen.sh >/dev/null 2>build-autogen.log || { cat build-autogen.log >&2; exit 2; }

passed=0; failed=0; skipped=0
# Add the counts of one build tree's test-suite.log to the totals.
count() {
    local f=$1/test-suite.log p fl e x s
    if [ ! -f "$f" ]; then
        # make check stopped before running the suite (a test program failed to build)
        grep -E 'error|Error|\*\*\*' "$1/check.out" | head -40 >&2
        log "${1##*/}: make check did not run the suite"; failed=$((failed + 1)); return
    fi
    p=$(sed -n 's/^# PASS: *//p' "$f" | head -1)
    fl=$(sed -n 's/^# FAIL: *//p' "$f" | head -1)
    e=$(sed -n 's/^# ERROR: *//p' "$f" | head -1)
    x=$(sed -n 's/^# XPASS: *//p' "$f" | head -1)
    s=$(sed -n 's/^# SKIP: *//p' "$f" | head -1)
    passed=$((passed + ${p:-0})); failed=$((failed + ${fl:-0} + ${e:-0} + ${x:-0})); skipped=$((skipped + ${s:-0}))
}

# One configure + build + check pass in build-test/NAME. A failed build counts as one failure.
pass() {
    local name=$1; shift
    local dir=$top/build-test/$name
    log "$name: configure $*"
    rm -rf "$dir"; mkdir -p "$dir"
    if ! (cd "$dir" && "$top/configure" -q "$@" >configure.out 2>&1); then
        tail -30 "$dir/config.log" >&2; log "$name: configure FAILED"; failed=$((failed + 1)); return
    fi
    log "$name: build"
    if ! (cd "$dir" && make -j"$jobs" >make.out 2>&1); then
        grep -E 'error|Error' "$dir/make.out" | head -40 >&2; log "$name: build FAILED"; failed=$((failed + 1)); return
    fi
    log "$name: make check"
    (cd "$dir" && make -j"$jobs" check >check.out 2>&1)
    grep -E '^(FAIL|ERROR|XPASS|SKIP):' "$dir/check.out" | sed "s/^/[$name] /"
    for t in "$dir"/tests/*/*.log; do
        grep -q -E '^(not ok|Bail out)' "$t" 2>/dev/null && { echo "---- [$name] ${t##*/}"; grep -E '^(not ok|Bail out|#)' "$t" | head -40; }
    done
    count "$dir"
}

pass release --enable-werror
if [ "${PI_TEST_QUICK:-0}" != 1 ]; then
    pass sanitizers --enable-werror --enable-sanitizers --without-cuda
    log "distcheck"
    dc=$top/build-test/release
    if (cd "$dc" && make -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS="--enable-werror --without-cuda" >distcheck.out 2>&1); then
        passed=$((passed + 1)); log "distcheck: ok"
    else
        failed=$((failed + 1)); tail -40 "$dc/distcheck.out" >&2; log "distcheck: FAILED"
    fi
fi

# ---- the fuzz targets, briefly (doc/security.md says how to run them for hours)
if [ "${PI_TEST_QUICK:-0}" != 1 ]; then
    fz=$top/build-test/release
    probe=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$probe/p.c"
    if command -v clang >/dev/null && clang -fsanitize=fuzzer,address -o "$probe/p" "$probe/p.c" >/dev/null 2>&1 &&
        [ -n "$(sed -n 's/^CLANG = //p' "$fz/Makefile" 2>/dev/null)" ]; then
        log "fuzz"
        if (cd "$fz" && make fuzz FUZZ_TIME=15 FUZZ_TIME_SMALL=15 >fuzz.out 2>&1); then
            passed=$((passed + 1)); log "fuzz: ok (no finding)"
        else
            failed=$((failed + 1)); tail -40 "$fz/fuzz.out" >&2; log "fuzz: FAILED (a finding, or the targets did not build)"
        fi
    else
        skipped=$((skipped + 1)); log "fuzz: skipped (clang cannot build libFuzzer targets here)"
    fi
    rm -rf "$probe"
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
