/*
 * tests/tap.h - a small TAP (Test Anything Protocol) producer for pinfer's test programs.
 *
 * Each test program prints "1..N" (or a plan at the end via tap_done), then "ok K - name" or
 * "not ok K - name" lines; Automake's tap-driver.sh counts them. Header-only so that every test
 * program gets its own counters without a library.
 *
 *   tap_ok(cond, "fmt", ...)           one check
 *   tap_is_int(got, want, "name")      equality with both values printed on failure
 *   tap_near(got, want, tol, "name")   |got - want| <= tol
 *   tap_skip(n, "why")                 n skipped checks ("ok K # SKIP why")
 *   tap_skip_all("why")                whole program skipped ("1..0 # SKIP why"), then exit 0
 *   tap_diag("fmt", ...)               a "# " comment line
 *   return tap_done();                 prints the trailing plan; exit status 1 if anything failed
 */
#ifndef PI_TESTS_TAP_H
#define PI_TESTS_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int tap_count_ = 0;
static int tap_failed_ = 0;

__attribute__((format(printf, 2, 3), unused)) static int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    tap_count_++;
    if (!cond) tap_failed_++;
    printf("%s %d - ", cond ? "ok" : "not ok", tap_count_);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return cond;
}

__attribute__((format(printf, 1, 2), unused)) static void tap_diag(const char *fmt, ...)
{
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

__attribute__((unused)) static int tap_is_int(long long got, long long want, const char *name)
{
    int ok = tap_ok(got == want, "%s", name);
    if (!ok) tap_diag("  got %lld, want %lld", got, want);
    return ok;
}

__attribute__((unused)) static int tap_is_str(const char *got, const char *want, const char *name)
{
    int ok = tap_ok(got && want && strcmp(got, want) == 0, "%s", name);
    if (!ok) tap_diag("  got \"%s\", want \"%s\"", got ? got : "(null)", want ? want : "(null)");
    return ok;
}

__attribute__((unused)) static int tap_near(double got, double want, double tol, const char *name)
{
    int ok = tap_ok(fabs(got - want) <= tol, "%s", name);
    if (!ok) tap_diag("  got %.9g, want %.9g (tolerance %.3g)", got, want, tol);
    return ok;
}

__attribute__((unused)) static void tap_skip(int n, const char *why)
{
    for (int i = 0; i < n; i++) {
        tap_count_++;
        printf("ok %d # SKIP %s\n", tap_count_, why);
    }
    fflush(stdout);
}

__attribute__((noreturn, unused)) static void tap_skip_all(const char *why)
{
    printf("1..0 # SKIP %s\n", why);
    fflush(stdout);
    exit(0);
}

__attribute__((noreturn, format(printf, 1, 2), unused)) static void tap_bail(const char *fmt, ...)
{
    va_list ap;
    printf("Bail out! ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(1);
}

__attribute__((unused)) static int tap_done(void)
{
    printf("1..%d\n", tap_count_);
    if (tap_failed_) printf("# %d of %d checks failed\n", tap_failed_, tap_count_);
    fflush(stdout);
    return tap_failed_ ? 1 : 0;
}

/* Path of a file under the shared fixtures ($PI_FIXTURES, normally ../shared/fixtures), written to
 * buf; returns buf, or NULL when the fixtures or that file are absent (the caller then skips). */
__attribute__((unused)) static const char *tap_fixture(char *buf, size_t len, const char *rel)
{
    const char *root = getenv("PI_FIXTURES");
    struct stat st;
    if (!root || !*root) return NULL;
    if ((size_t)snprintf(buf, len, "%s/%s", root, rel) >= len) return NULL;
    return stat(buf, &st) == 0 ? buf : NULL;
}

/* Path of a file under the project's tests/data ($PI_SRCDIR/tests/data), written to buf. Data in the
 * tree is always there: a missing file is a broken tree, so this bails out. */
__attribute__((unused)) static const char *tap_data(char *buf, size_t len, const char *rel)
{
    const char *root = getenv("PI_SRCDIR");
    struct stat st;
    if (!root || !*root) root = ".";
    if ((size_t)snprintf(buf, len, "%s/tests/data/%s", root, rel) >= len || stat(buf, &st) != 0)
        tap_bail("test data %s missing under %s/tests/data", rel, root);
    return buf;
}

#endif
