#!/bin/sh
# tests/integration/test-man.sh - every man page in man/ is clean under mandoc -Tlint: no message at any
# level, style included (a .TH date mandoc cannot parse, an invalid escape, a text line longer than 80
# bytes). One test per page, after one that shows mandoc -Tlint does report a bad page, so that a
# mandoc that says nothing at all cannot pass. Skips when mandoc is not installed. TAP output.
S=${PI_SRCDIR:-.}/man
if ! command -v mandoc >/dev/null 2>&1; then echo "1..0 # SKIP mandoc not installed"; exit 0; fi
T=$(mktemp -d "${TMPDIR:-/tmp}/test-man.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
trap 'rm -rf "$T"' EXIT
n=0
ok() { # ok STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

pages=$(ls "$S"/*.[1-8] 2>/dev/null)
[ -n "$pages" ] || { echo "Bail out! no man pages in $S"; exit 1; }
echo "1..$(($(echo "$pages" | wc -l) + 1))"

# the canary: an unparsable date and an invalid escape
printf '.TH BAD 1 "November 2026" x y\n.SH NAME\nbad \\- \\(u2581\n' > "$T/bad.1"
mandoc -Tlint "$T/bad.1" > "$T/out" 2>&1
grep -q 'cannot parse date' "$T/out" && grep -q 'invalid escape' "$T/out"
ok $? "mandoc -Tlint reports a bad page ($(head -c 200 "$T/out" | tr '\n' ' '))"

for p in $pages; do
    mandoc -Tlint "$p" > "$T/out" 2>&1
    st=$?
    [ $st -eq 0 ] && [ ! -s "$T/out" ]
    r=$?
    sed 's/^/# /' "$T/out"
    ok $r "mandoc -Tlint man/${p##*/}: no message (exit $st)"
done
