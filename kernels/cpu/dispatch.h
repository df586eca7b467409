/*
 * kernels/cpu/dispatch.h - choosing the CPU kernel variant (scalar, AVX2, AVX-512) once per process.
 *
 * Each variant is a table of function pointers, one dequantiser and one dot product per element
 * type. The scalar table is complete (the portable reference); a SIMD table fills the entries it
 * accelerates and is completed at init from the variant below it (AVX512-VNNI from AVX-512, AVX-512
 * from AVX2, AVX2 from scalar), so every entry of every table is callable. pi_kernels_init() reads
 * CPUID (and XGETBV: the OS must save the wide registers) and makes the best variant this CPU and
 * build run the active table. It is idempotent and thread-safe and is called lazily by every entry
 * point of kernels/cpu. A program may choose another variant once at start-up with pi_kernels_use
 * (the [tune] cpu_kernels key of pinfer.conf, a benchmark's --kernels option); no environment
 * variable changes it.
 */
#ifndef PI_KERNELS_CPU_DISPATCH_H
#define PI_KERNELS_CPU_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/rows16.h"
#include "lib/conf.h"
#include "lib/types.h"

enum pi_kernel_isa {
    PI_KERNEL_SCALAR = 0,
    PI_KERNEL_AVX2 = 1,       /* AVX2 + FMA + F16C */
    PI_KERNEL_AVX512 = 2,     /* AVX-512 F, BW, VL, DQ (+ the AVX2 set) */
    PI_KERNEL_AVX512VNNI = 3, /* the same plus AVX512-VNNI (vpdpbusd: Q4_0/Q8_0, 16-row packs) */
    PI_KERNEL_AMX = 4,        /* avx512vnni plus AMX-INT8 tiles for prompts over 16-row packed matrices */
    PI_KERNEL_ISA_COUNT = 5,
};

/* wrow: n elements of the weight type; xq: n activations in pi_vec_dot_type(weight type). */
typedef float (*pi_vec_dot_fn)(const void *wrow, const void *xq, int64_t n);
/* Four tokens against one weight row: out[k] = the same variant's vec_dot(wrow, xq + k * xstride, n)
 * for k = 0..3, bit for bit (each token's float operations are the 1-token kernel's, in its order; only
 * the weight unpacking and the weight scales are shared). xstride: bytes between the tokens' rows. */
typedef void (*pi_vec_dot4_fn)(const void *wrow, const void *xq, size_t xstride, float out[4], int64_t n);
/* Two weight rows (wrow, wrow + wstride) against four tokens: out[r * 4 + k] = vec_dot(row r, token k),
 * bit for bit as vec_dot4; the tokens' activations are loaded once for both rows. */
typedef void (*pi_vec_dot8_fn)(const void *wrow, size_t wstride, const void *xq, size_t xstride, float out[8],
                               int64_t n);
/* Two weight rows of one matrix (w0, w1: any two rows, in any order) against one token: out[r] = the same
 * variant's vec_dot(row r, xq, n) bit for bit; the activations are loaded and prepared once for both
 * rows (on one Sapphire Rapids core, Q4_0 rows of 5120 held in L2: 20.0 GB/s one row at a time, 25.5
 * through this; Q8_0 35 and 41). */
typedef void (*pi_vec_dot2_fn)(const void *w0, const void *w1, const void *xq, float out[2], int64_t n);
/* Four weight rows of one matrix (w[0..3]: any rows, in any order, repeats allowed) against one token:
 * out[r] = the same variant's vec_dot(w[r], xq, n) bit for bit; AVX-512 loads and prepares the
 * activations once for the four rows, AVX2 runs its 1-row kernel four times. pf: NULL, or four rows
 * of the same type and length (pf[r] is read alongside w[r]) whose bytes at each step's read offsets
 * the kernel prefetches as it goes: pi_matvec passes the next group of rows, pi_ffn_neurons the next
 * four listed neurons' rows, scattered as they are (a core keeps more lines in flight, spread over the
 * arithmetic, than the hardware prefetcher or a burst of prefetches gives it). The pf rows are never
 * dereferenced and change no result. */
typedef void (*pi_vec_dot4r_fn)(const void *const w[4], const void *const pf[4], const void *xq, float out[4],
                                int64_t n);
/* y (n,) += a * dequant(row): the same floats as dequantising row and then y[i] += a * x[i] (a multiply
 * and an add, each rounded; no FMA). */
typedef void (*pi_vec_mad_fn)(const void *row, float a, float *y, int64_t n);
/* y (n,) += a[0] * dequant(row[0]), then a[1] * row[1], ... up to row[m - 1] (m = 1..4): bit for bit m
 * calls of the same variant's vec_mad in that order (each element gets the same roundings in the same
 * order), but y is loaded and stored once per step for the m rows instead of once per row. pf: NULL, or
 * m rows of the same type and length whose bytes matching each step's reads are prefetched (as
 * vec_dot4r's; the next active neurons' down rows in pi_ffn_neurons); never dereferenced. */
typedef void (*pi_vec_mad4_fn)(const void *const row[4], const float a[4], int m, const void *const pf[4], float *y,
                               int64_t n);
/* pi_vec_madg4 (kernels/cpu/quant.h): m (1..4) grouped rows of the type with their scale rows s. */
typedef void (*pi_vec_madg4_fn)(const void *const row[4], const uint16_t *const s[4], const float a[4], int m,
                                const void *const pf[4], float *y, int64_t n);
/* src: n elements of the type -> dst (n,) */
typedef void (*pi_dequant_fn)(const void *src, float *dst, int64_t n);
/* src (n,) floats -> n elements of the type, the same bytes as the scalar reference quantiser. */
typedef void (*pi_quantize_fn)(const float *src, void *dst, int64_t n);

struct pi_kernel_table {
    const char *name;                         /* "scalar", "avx2", "avx512", "avx512vnni", "amx" */
    pi_vec_dot_fn vec_dot[PI_TYPE_COUNT];     /* NULL where the type has no dot product */
    pi_vec_dot4_fn vec_dot4[PI_TYPE_COUNT];   /* NULL: no 4-token kernel matching vec_dot (loop it) */
    pi_vec_dot8_fn vec_dot8[PI_TYPE_COUNT];   /* 2 rows x 4 tokens; NULL: use vec_dot4 per row */
    pi_vec_dot2_fn vec_dot2[PI_TYPE_COUNT];   /* 2 rows x 1 token; NULL: vec_dot per row */
    pi_vec_dot4r_fn vec_dot4r[PI_TYPE_COUNT]; /* 4 rows x 1 token; NULL: vec_dot2 per pair */
    pi_vec_mad_fn vec_mad[PI_TYPE_COUNT];     /* fused dequant + axpy; NULL: pi_vec_mad's chunked loop */
    pi_vec_mad4_fn vec_mad4[PI_TYPE_COUNT];   /* 1..4 rows per pass over y; NULL: vec_mad per row */
    pi_vec_madg4_fn vec_madg4[PI_TYPE_COUNT]; /* grouped Q4_0 / Q8_0 rows; NULL: the scalar reference */
    pi_dequant_fn dequant[PI_TYPE_COUNT];     /* NULL where the type has no dequantiser */
    pi_quantize_fn quantize[PI_TYPE_COUNT];   /* SIMD quantisers (activations); NULL: the scalar one */
    /* Q4_0, Q8_0 and the Q4_K, Q5_K, Q6_K in 16-row groups (kernels/cpu/rows16.h); NULL: the variant has none for the type,
     * and the dense products read the file's rows. Never inherited from the variant below. */
    pi_r16_dot_fn r16_dot[PI_TYPE_COUNT];
};

/* Detect the CPU and choose the variant (once; later calls return at once). */
void pi_kernels_init(void);

/* Make variant isa (an enum pi_kernel_isa; negative: the best) the active one, clamped with a warning
 * to the best this CPU and build run. Call it at start-up, before any kernel runs and before other
 * threads start (the active table is read without a lock); tests may call it again between runs.
 * Returns the variant now active. */
enum pi_kernel_isa pi_kernels_use(int isa);

/* The variant [tune] cpu_kernels of a configuration asks for, as pi_kernels_use takes it (auto: -1). */
static inline int pi_kernels_of_tune(const struct pi_tune *t) { return (int)t->cpu_kernels - 1; }
_Static_assert(PI_TUNE_CPU_KERNELS_SCALAR == PI_KERNEL_SCALAR + 1 && PI_TUNE_CPU_KERNELS_AVX2 == PI_KERNEL_AVX2 + 1 &&
                   PI_TUNE_CPU_KERNELS_AVX512 == PI_KERNEL_AVX512 + 1 &&
                   PI_TUNE_CPU_KERNELS_AVX512VNNI == PI_KERNEL_AVX512VNNI + 1 &&
                   PI_TUNE_CPU_KERNELS_AMX == PI_KERNEL_AMX + 1,
               "[tune] cpu_kernels names the variants in enum pi_kernel_isa's order");

/* Name of the active variant ("scalar", "avx2", "avx512", "avx512vnni", "amx"). */
const char *pi_kernels_variant(void);
enum pi_kernel_isa pi_kernels_isa(void);

/* The active table (complete). */
const struct pi_kernel_table *pi_kernels_active(void);

/* True when variant isa is compiled in and this CPU (and OS) can run it. */
bool pi_kernels_available(enum pi_kernel_isa isa);

/* Variant isa's completed table, or NULL when !pi_kernels_available(isa). For tests and benchmarks. */
const struct pi_kernel_table *pi_kernels_table(enum pi_kernel_isa isa);

/* True when variant isa implements t's dot product itself (not a fallback to the variant below). */
bool pi_kernels_native_vec_dot(enum pi_kernel_isa isa, enum pi_type t);
bool pi_kernels_native_dequant(enum pi_kernel_isa isa, enum pi_type t);

#endif
