/*
 * lib/common.h - what every pinfer module shares: the error enum, the always-on assertion, and
 * overflow-checked size arithmetic.
 *
 * Three error mechanisms are kept apart (see STYLE.md):
 *   1. broken invariants abort through PI_ASSERT, which stays on in release builds (never assert());
 *   2. runtime failures return a negative enum pi_err, logged once where detected, propagated;
 *   3. only main() exits.
 */
#ifndef PI_COMMON_H
#define PI_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Runtime failures. Functions return 0 (PI_OK) or one of these, negated. */
enum pi_err {
    PI_OK = 0,
    PI_ERR_NOMEM = 1,    /* allocation failed */
    PI_ERR_IO = 2,       /* a system call failed (errno logged where it happened) */
    PI_ERR_FORMAT = 3,   /* an input file or message is malformed */
    PI_ERR_INVAL = 4,    /* a caller-supplied argument or option is invalid */
    PI_ERR_RANGE = 5,    /* a size or index is out of range, or arithmetic would overflow */
    PI_ERR_UNSUPPORTED = 6, /* well-formed but not supported (type, architecture, version) */
    PI_ERR_NOTFOUND = 7, /* a key, tensor or file is missing */
    PI_ERR_PEER = 8,     /* another process died, timed out or broke the protocol */
    PI_ERR_DEVICE = 9,   /* a GPU/driver error */
    PI_ERR_TIMEOUT = 10, /* a bounded wait expired */
};

/* Short name of an error ("format", "nomem", ...); never NULL. err may be negative or positive. */
const char *pi_err_str(int err);

/* Abort with file:line and the failed expression. Used for invariants only, never for input checks
 * (those return PI_ERR_*). Active in every build type: it does not depend on NDEBUG. */
#define PI_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (__builtin_expect(!(cond), 0)) pi_assert_fail(#cond, __FILE__, __LINE__, __func__);    \
    } while (0)

__attribute__((noreturn)) void pi_assert_fail(const char *expr, const char *file, int line, const char *func);

/* Threads of one CPU thread pool (kernels/cpu/pool.c): the one bound of [cpu] threads, the workers'
 * --threads and pi-bench -t, so a count out of range is a usage error where it is given. */
#define PI_MAX_THREADS 1024

#define PI_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PI_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Overflow-checked arithmetic on sizes. Mind the two polarities, which the names carry:
 *   pi_add_overflows / pi_mul_overflows return true when the result WRAPS (then *out is unspecified)
 *     and false when it fits:      if (pi_mul_overflows(a, b, &n)) return -PI_ERR_RANGE;
 *   pi_size_add / pi_size_mul return true when the result FITS and false when it would wrap:
 *                                  if (!pi_size_mul(a, b, &n)) return -PI_ERR_NOMEM; */
static inline bool pi_add_overflows(uint64_t a, uint64_t b, uint64_t *out) { return __builtin_add_overflow(a, b, out); }
static inline bool pi_mul_overflows(uint64_t a, uint64_t b, uint64_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline bool pi_size_add(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline bool pi_size_mul(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }

/* Round x up to a multiple of align (a power of two). The caller guarantees no overflow. */
static inline uint64_t pi_align_up(uint64_t x, uint64_t align) { return (x + align - 1) & ~(align - 1); }
static inline bool pi_is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

#endif
