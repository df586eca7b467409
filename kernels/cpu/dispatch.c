/*
 * kernels/cpu/dispatch.c - CPU feature detection and the choice of kernel variant (the best, or the
 * one pi_kernels_use asks for at start-up).
 *
 * DESIGN: the variants' raw tables are sparse; at init each is completed from the scalar table into a
 * static copy, and one pointer (the active table) is set under pthread_once, so the hot path is a load
 * and an indirect call with no branches on CPU features. A variant is "available" only when it was
 * compiled in (PI_HAVE_X86_SIMD), CPUID reports its instructions and XGETBV says the OS saves the
 * registers they use (YMM for AVX2; opmask/ZMM for AVX-512 and AVX512-VNNI; the tile state for AMX,
 * which Linux must also grant the process once, see amx_permitted).
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/quant-impl.h"
#include "lib/common.h"
#include "lib/log.h"

static const char *const isa_names[PI_KERNEL_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512vnni", "amx"};

static struct pi_kernel_table tables[PI_KERNEL_ISA_COUNT];
static bool available[PI_KERNEL_ISA_COUNT];
static bool native_dot[PI_KERNEL_ISA_COUNT][PI_TYPE_COUNT];
static bool native_deq[PI_KERNEL_ISA_COUNT][PI_TYPE_COUNT];
static enum pi_kernel_isa active_isa = PI_KERNEL_SCALAR;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

/* Linux keeps the AMX tile data (8 KiB per thread) out of a process's state until it asks once with
 * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); a tile instruction before that faults. False
 * where the kernel refuses (older than 5.16, or a policy) or this is not Linux. */
static bool amx_permitted(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    const long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    if (syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0) return true;
    pi_debug("cpu kernels: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: %s; no AMX", strerror(errno));
#endif
    return false;
}

/* Which variants this CPU and OS can run (ignoring what was compiled); amx only asked of the OS when
 * want_amx (the variant was compiled). */
static void detect_cpu(bool want_amx, bool *avx2, bool *avx512, bool *vnni, bool *amx)
{
    unsigned a, b, c, d, b7, c7, d7;
    *avx2 = *avx512 = *vnni = *amx = false;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    if (!osxsave || !avx) return;
    uint64_t xcr0 = read_xcr0();
    bool ymm_os = (xcr0 & 0x6) == 0x6;   /* XMM and YMM state */
    bool zmm_os = (xcr0 & 0xe6) == 0xe6; /* plus opmask, ZMM_Hi256, Hi16_ZMM */
    if (!__get_cpuid_count(7, 0, &a, &b7, &c7, &d7)) return;
    bool has_avx2 = b7 & (1u << 5);
    bool f = b7 & (1u << 16), dq = b7 & (1u << 17), bw = b7 & (1u << 30), vl = b7 & (1u << 31);
    *avx2 = ymm_os && has_avx2 && fma && f16c;
    *avx512 = *avx2 && zmm_os && f && dq && bw && vl;
    *vnni = *avx512 && (c7 & (1u << 11)); /* CPUID.(7,0):ECX[11] AVX512_VNNI */
    /* CPUID.(7,0):EDX[24] AMX-TILE, [25] AMX-INT8; XCR0[17] XTILECFG, [18] XTILEDATA */
    bool tiles_os = (xcr0 & (3ull << 17)) == (3ull << 17);
    *amx = want_amx && *vnni && (d7 & (1u << 24)) && (d7 & (1u << 25)) && tiles_os && amx_permitted();
}
#else
static void detect_cpu(bool want_amx, bool *avx2, bool *avx512, bool *vnni, bool *amx)
{
    (void)want_amx;
    *avx2 = *avx512 = *vnni = *amx = false;
}
#endif

/* tables[isa] = the completed table of the variant below (base), overlaid with raw's non-NULL
 * entries: AVX-512 falls back to AVX2 where it has no kernel of its own, AVX2 to scalar. A 4-token
 * kernel is inherited only together with the 1-token kernel it matches bit for bit: a variant with
 * its own vec_dot but no vec_dot4 gets none (pi_matmul then loops vec_dot); likewise vec_dot8,
 * vec_dot2 and vec_dot4r. */
static void complete_table(enum pi_kernel_isa isa, const struct pi_kernel_table *raw, const struct pi_kernel_table *sc)
{
    tables[isa].name = isa_names[isa];
    memcpy(tables[isa].r16_dot, raw->r16_dot, sizeof raw->r16_dot);
    for (int t = 0; t < PI_TYPE_COUNT; t++) {
        native_dot[isa][t] = raw->vec_dot[t] != NULL;
        native_deq[isa][t] = raw->dequant[t] != NULL;
        tables[isa].vec_dot[t] = raw->vec_dot[t] ? raw->vec_dot[t] : sc->vec_dot[t];
        tables[isa].dequant[t] = raw->dequant[t] ? raw->dequant[t] : sc->dequant[t];
        tables[isa].vec_dot4[t] = raw->vec_dot4[t] ? raw->vec_dot4[t] : raw->vec_dot[t] ? NULL : sc->vec_dot4[t];
        tables[isa].vec_dot8[t] = raw->vec_dot8[t] ? raw->vec_dot8[t] : raw->vec_dot[t] ? NULL : sc->vec_dot8[t];
        tables[isa].vec_dot2[t] = raw->vec_dot2[t] ? raw->vec_dot2[t] : raw->vec_dot[t] ? NULL : sc->vec_dot2[t];
        tables[isa].vec_dot4r[t] = raw->vec_dot4r[t] ? raw->vec_dot4r[t] : raw->vec_dot[t] ? NULL : sc->vec_dot4r[t];
        tables[isa].vec_mad[t] = raw->vec_mad[t] ? raw->vec_mad[t] : sc->vec_mad[t];         /* exact everywhere */
        tables[isa].vec_mad4[t] = raw->vec_mad4[t] ? raw->vec_mad4[t] : sc->vec_mad4[t];     /* likewise */
        tables[isa].vec_madg4[t] = raw->vec_madg4[t] ? raw->vec_madg4[t] : sc->vec_madg4[t]; /* likewise */
        tables[isa].quantize[t] = raw->quantize[t] ? raw->quantize[t] : sc->quantize[t];     /* same bytes */
    }
}

/* The best variant available (after init). */
static enum pi_kernel_isa best_isa(void)
{
    enum pi_kernel_isa best = PI_KERNEL_SCALAR;
    for (int i = 0; i < PI_KERNEL_ISA_COUNT; i++)
        if (available[i]) best = (enum pi_kernel_isa)i;
    return best;
}

static void init_once_fn(void)
{
    bool cpu_avx2, cpu_avx512, cpu_vnni, cpu_amx;
#ifdef PI_HAVE_AMX
    detect_cpu(true, &cpu_avx2, &cpu_avx512, &cpu_vnni, &cpu_amx);
#else
    detect_cpu(false, &cpu_avx2, &cpu_avx512, &cpu_vnni, &cpu_amx);
#endif
    complete_table(PI_KERNEL_SCALAR, &pi_kernels_scalar_raw, &pi_kernels_scalar_raw);
    available[PI_KERNEL_SCALAR] = true;
#ifdef PI_HAVE_X86_SIMD
    complete_table(PI_KERNEL_AVX2, &pi_kernels_avx2_raw, &tables[PI_KERNEL_SCALAR]);
    complete_table(PI_KERNEL_AVX512, &pi_kernels_avx512_raw, &tables[PI_KERNEL_AVX2]);
    complete_table(PI_KERNEL_AVX512VNNI, &pi_kernels_avx512vnni_raw, &tables[PI_KERNEL_AVX512]);
    available[PI_KERNEL_AVX2] = cpu_avx2;
    available[PI_KERNEL_AVX512] = cpu_avx512;
    available[PI_KERNEL_AVX512VNNI] = cpu_vnni;
#ifdef PI_HAVE_AMX
    complete_table(PI_KERNEL_AMX, &pi_kernels_amx_raw, &tables[PI_KERNEL_AVX512VNNI]);
    available[PI_KERNEL_AMX] = cpu_amx;
#endif
#else
    (void)cpu_avx2, (void)cpu_avx512, (void)cpu_vnni, (void)cpu_amx;
#endif
    active_isa = best_isa();
    pi_debug("cpu kernels: %s", isa_names[active_isa]);
}

void pi_kernels_init(void) { PI_ASSERT(pthread_once(&init_once, init_once_fn) == 0); }

enum pi_kernel_isa pi_kernels_use(int isa)
{
    pi_kernels_init();
    const enum pi_kernel_isa best = best_isa();
    if (isa >= PI_KERNEL_ISA_COUNT) {
        pi_warn("cpu kernels: variant %d unknown, using %s", isa, isa_names[best]);
        isa = -1;
    } else if (isa > (int)best) {
        pi_warn("cpu kernels: this CPU (or build) cannot run %s, using %s", isa_names[isa], isa_names[best]);
        isa = -1;
    }
    active_isa = isa < 0 ? best : (enum pi_kernel_isa)isa;
    pi_debug("cpu kernels: %s", isa_names[active_isa]);
    return active_isa;
}

enum pi_kernel_isa pi_kernels_isa(void)
{
    pi_kernels_init();
    return active_isa;
}

const char *pi_kernels_variant(void) { return isa_names[pi_kernels_isa()]; }

const struct pi_kernel_table *pi_kernels_active(void) { return &tables[pi_kernels_isa()]; }

bool pi_kernels_available(enum pi_kernel_isa isa)
{
    pi_kernels_init();
    return (unsigned)isa < PI_KERNEL_ISA_COUNT && available[isa];
}

const struct pi_kernel_table *pi_kernels_table(enum pi_kernel_isa isa)
{
    return pi_kernels_available(isa) ? &tables[isa] : NULL;
}

bool pi_kernels_native_vec_dot(enum pi_kernel_isa isa, enum pi_type t)
{
    return pi_kernels_available(isa) && (unsigned)t < PI_TYPE_COUNT && native_dot[isa][t];
}

bool pi_kernels_native_dequant(enum pi_kernel_isa isa, enum pi_type t)
{
    return pi_kernels_available(isa) && (unsigned)t < PI_TYPE_COUNT && native_deq[isa][t];
}
