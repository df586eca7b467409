/*
 * kernels/cuda/mmq.cu - batched products on the quantised blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q3_K, Q4_K,
 * Q5_K, Q6_K; not Q2_K, whose per-16 mins would need per-16 sums of x) with the
 * integer tensor cores: Y (T, rows) = X (T, cols) W^T for batches of more than
 * PI_CUDA_MATVEC_MAX_ROWS tokens, in place of the dequantise-to-f16 tiles and cuBLAS (matmul.cu),
 * which moved 4.5 bytes per Q4_0 weight and per batch (dequantised to f16, written, read back) where
 * this reads the stored 0.56.
 *
 * The scheme (the one llama.cpp's MMQ made standard; the code is this project's): X is quantised per
 * token and 32 columns (a "segment") to int8 with a float scale d (d = max |x| / 127, q =
 * round-to-nearest-even(x / d), the rule of the q8 matvec, matvec-q8.cu) and the sum of its q; W's
 * segments are int8 already (Q8_0) or become int8 in registers (Q4_0: nibble - 8; Q5_0: 5 bits - 16;
 * Q4_1, Q5_1: the 4 or 5 bits, m applied through the sum of x; Q4_K: the nibble, its min applied
 * through the sum of x; Q5_K: the nibble and its fifth bit, 0..31, the min as Q4_K's; Q3_K: 3 bits - 4;
 * Q6_K: 6 bits - 32). One PTX `mma.sync.m16n8k32.s8` multiplies 16 rows by 8 tokens over a segment
 * in exact integer arithmetic (Q3_K and Q6_K, whose scales change every 16 columns: two m16n8k16);
 * the integer sums are converted to float and scaled into float accumulators, segment after segment
 * in order.
 *
 * Threading. A thread block takes 32 rows of W (two 16-row mma tiles) and up to 64 tokens (8 tiles of
 * 8); its KS warps split the row's segments into KS consecutive ranges, and the warps' float partials
 * are summed in shared memory in warp order by warp 0, which stores them. KS (1..8) is chosen from the
 * matrix's shape and the SM count only, so that small-M matrices still fill the device; never from T.
 * Hence a token's outputs are the same bits in any batch (its own x row, the same segment order, the
 * same slice sums): test-cuda checks that with memcmp.
 *
 * Fragments (PTX ISA, mma.m16n8k32 .s8, lane = 4 g + t): A's four registers hold row g and row g + 8,
 * k in [4t, 4t + 4) and [16 + 4t, 16 + 4t + 4); B's two hold token g, the same k; C's four rows g and
 * g + 8, tokens 2t and 2t + 1 (m16n8k16: A's first two registers, B's first). For Q4_0, the device's
 * 16 bytes of a block hold element j in the low nibble of byte j and element j + 16 in the high one
 * (ggml's order), so one 32-bit load at byte 4t gives both A registers of a row. The quantised X is
 * laid out segment-major, [segment][token][32 bytes], each token's 32 bytes permuted so that bytes
 * [8t, 8t + 8) hold elements [4t, 4t + 4) then [16 + 4t, 16 + 4t + 4): a B fragment is one 8-byte
 * load, and a tile of 8 tokens is 256 contiguous bytes. Tokens are padded to a multiple of 8 with
 * zeros (scale 0).
 *
 * Needs sm_80 (mma.sync with s8): built where every architecture of CUDA_ARCHS has it
 * (pi_cuda_mmq_built, kernels/cuda/plan.h, which the VRAM plan follows); a context can turn it off
 * (pi_cuda_opts.no_mmq), and the products then keep the f16 path.
 */
#include "kernels/cuda/cuda-impl.h"

#define PI_MMQ_ROWS 32      /* rows of W per thread block */
#define PI_MMQ_TOKENS 64    /* tokens per thread block (8 tiles of 8) */
#define PI_MMQ_MAX_SLICES 8 /* warps per block, each a range of the blocks of a row */
#define PI_MMQ_QUANT_THREADS 256

/* plan.c's count of the quantised X and this file's layout agree. */
static_assert(PI_CUDA_MMQ_TOK_ALIGN == 8, "tokens padded to the 8 of an mma tile");

extern "C" bool pi_cuda_mmq_for(const pi_cuda_ctx_t *c, int type) { return c->mmq && pi_cuda_mmq_built(type); }

/* Byte of element e (0..31) of a block in the permuted layout above. */
__device__ __forceinline__ int pi_mmq_pos(int e)
{
    return e < 16 ? 8 * (e >> 2) + (e & 3) : 8 * ((e - 16) >> 2) + 4 + (e & 3);
}

/* Warp w of block (bx, n) quantises segment b = 8 bx + w (32 columns) of token n of X (T, 32 nseg)
 * into xq [nseg][Tp][32] and xd [nseg][Tp] = {d, d * sum of q} (the sum for the K-quants' mins);
 * tokens T .. Tp - 1 become zeros with scale 0. */
__global__ void __launch_bounds__(PI_MMQ_QUANT_THREADS)
    k_mmq_quant(int64_t T, int64_t Tp, int64_t nseg, const float *__restrict__ x, int8_t *__restrict__ xq,
                float2 *__restrict__ xd)
{
    const int lane = threadIdx.x & 31;
    const int64_t b = (int64_t)blockIdx.x * (PI_MMQ_QUANT_THREADS / 32) + (threadIdx.x >> 5), n = blockIdx.y;
    if (b >= nseg) return;
    const float v = n < T ? __ldg(x + n * nseg * 32 + b * 32 + lane) : 0.0f;
    const float amax = pi_warp_max(fabsf(v));
    /* as pi_q8_quant_warp: a block of values below ~4e-37 becomes zeros (1 / d would overflow) */
    const float d0 = amax / 127.0f, d = d0 >= 1.17549435e-38f ? d0 : 0.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = __float2int_rn(v * id);
    xq[(b * Tp + n) * 32 + pi_mmq_pos(lane)] = (int8_t)q;
    int sum = q;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) xd[b * Tp + n] = make_float2(d, d * (float)sum);
}

/* int32 -> float for |i| < 2^22 in two full-rate instructions (the conversion unit runs at a quarter
 * of the rate on sm_90): the integer added to the mantissa of 1.5 * 2^23. A segment's sum is at most
 * 32 * 128 * 127 in magnitude. */
__device__ __forceinline__ float pi_i2f_small(int i) { return __int_as_float(0x4B400000 + i) - 12582912.0f; }

/* c = a (16 x 32, 4 registers) * b (32 x 8, 2 registers), int8 in, int32 out (no accumulator in). */
__device__ __forceinline__ void pi_mma_s8(const uint32_t (&a)[4], uint32_t b0, uint32_t b1, int (&c)[4])
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%10, %10, %10, %10};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
#else
    (void)a, (void)b0, (void)b1;
    c[0] = c[1] = c[2] = c[3] = 0;
    __trap(); /* pi_cuda_ctx.mmq is false for such code: never launched */
#endif
}

/* c = a (16 x 16, 2 registers) * b (16 x 8, 1 register), int8 in, int32 out. */
__device__ __forceinline__ void pi_mma_s8_k16(uint32_t a0, uint32_t a1, uint32_t b0, int (&c)[4])
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %7, %7, %7};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0), "r"(0));
#else
    (void)a0, (void)a1, (void)b0;
    c[0] = c[1] = c[2] = c[3] = 0;
    __trap();
#endif
}

/* Bytes q (each below 128) to signed bytes q - OFF, without borrows between bytes. */
template <uint32_t OFF> __device__ __forceinline__ uint32_t pi_u8_minus(uint32_t n)
{
    return ((n | 0x80808080u) - OFF * 0x01010101u) ^ 0x80808080u;
}

/* The A fragments and scales of one 32-column segment for the thread's four rows (rows[mt][h]: row
 * g + 8 h of tile mt, clamped to the matrix); a row's value is
 *   Q4_0, Q5_0, Q8_0: s q (q signed: nibble - 8, 5 bits - 16, or the int8 itself);
 *   Q4_1, Q5_1: s q - o (q the 4 or 5 bits, s = d, o = -m);
 *   Q4_K, Q5_K: s q - o (q the nibble, with Q5_K's fifth bit, s = d sc, o = dmin m of the sub-block);
 *   Q3_K, Q6_K: s q over the segment's first 16 columns, s2 q over the last (q = 3 bits - 4 or 6 bits
 *               - 32, s = d scale of each 16-column half).
 * The formulas are ggml's (dequantize_row_* in ggml-quants.c); the device layouts cuda-impl.h's
 * (pi_seg_load). */
struct pi_mmq_a {
    uint32_t a[2][4];
    float s[2][2], o[2][2];
};

template <int T>
__device__ __forceinline__ void pi_mmq_load(const pi_wdev &w, const int64_t (&rows)[2][2], int64_t seg, int t,
                                            pi_mmq_a &f)
{
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if constexpr (T == PI_TYPE_Q4_0) {
                const int64_t blk = rows[mt][h] * w.nblk + seg;
                const uint32_t v = __ldg((const uint32_t *)(w.q + blk * 16) + t);
                f.a[mt][h] = pi_u8_minus<8>(v & 0x0F0F0F0Fu);
                f.a[mt][2 + h] = pi_u8_minus<8>((v >> 4) & 0x0F0F0F0Fu);
                f.s[mt][h] = __half2float(w.d[blk]);
            } else if constexpr (T == PI_TYPE_Q4_1 || T == PI_TYPE_Q5_0 || T == PI_TYPE_Q5_1) {
                /* the 16 bytes of nibbles as Q4_0's; the side entry {d, m} (Q4_1) or {d, 0 or m, qh}
                 * (Q5_0, Q5_1: element k's fifth bit is bit k of qh) */
                const int64_t blk = rows[mt][h] * w.nblk + seg;
                const uint32_t v = __ldg((const uint32_t *)(w.q + blk * 16) + t);
                uint32_t lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu, dm;
                if constexpr (T == PI_TYPE_Q4_1) {
                    dm = __ldg((const uint32_t *)w.d + blk);
                } else {
                    const uint2 sd = __ldg((const uint2 *)w.d + blk);
                    dm = sd.x;
                    lo |= pi_bits4_to_bytes(sd.y >> (4 * t)), hi |= pi_bits4_to_bytes(sd.y >> (16 + 4 * t));
                }
                f.a[mt][h] = T == PI_TYPE_Q5_0 ? pi_u8_minus<16>(lo) : lo;
                f.a[mt][2 + h] = T == PI_TYPE_Q5_0 ? pi_u8_minus<16>(hi) : hi;
                f.s[mt][h] = pi_h2f_bits(dm);
                f.o[mt][h] = T == PI_TYPE_Q5_0 ? 0.0f : -pi_h2f_bits(dm >> 16);
            } else if constexpr (T == PI_TYPE_Q3_K) {
                /* 112 bytes: hmask[32], qs[64], scales[12], d; element k of segment j = 4 c + i is
                 * ((qs[32 c + k] >> 2 i) & 3) | (bit j of hmask[k]) << 2, minus 4; the scales of its
                 * halves as pi_seg_unpack_raw's */
                const int j = (int)(seg & 7), sh = 2 * (j & 3);
                const uint8_t *blk = w.q + (rows[mt][h] * w.nblk + (seg >> 3)) * 112;
                const uint32_t *qs = (const uint32_t *)(blk + 32 + 32 * (j >> 2)), *hm = (const uint32_t *)blk;
                f.a[mt][h] =
                    pi_u8_minus<4>(((__ldg(qs + t) >> sh) & 0x03030303u) | (((__ldg(hm + t) >> j) & 0x01010101u) << 2));
                f.a[mt][2 + h] = pi_u8_minus<4>(((__ldg(qs + 4 + t) >> sh) & 0x03030303u) |
                                                (((__ldg(hm + 4 + t) >> j) & 0x01010101u) << 2));
                pi_q3k_scales(__ldg((const uint4 *)(blk + 96)), j, &f.s[mt][h], &f.o[mt][h]); /* o: the second half's */
            } else if constexpr (T == PI_TYPE_Q8_0) {
                const int64_t blk = rows[mt][h] * w.nblk + seg;
                const uint32_t *p = (const uint32_t *)(w.q + blk * 32);
                f.a[mt][h] = __ldg(p + t);
                f.a[mt][2 + h] = __ldg(p + 4 + t);
                f.s[mt][h] = __half2float(w.d[blk]);
            } else if constexpr (T == PI_TYPE_Q4_K) {
                /* 144 bytes: f16 d, f16 dmin, 12 bytes of scales and mins, 128 of nibbles; sub-block
                 * j is the low (even j) or high (odd j) nibbles of the 32 bytes at 16 + 32 (j / 2) */
                const int j = (int)(seg & 7), shift = 4 * (j & 1);
                const uint8_t *blk = w.q + (rows[mt][h] * w.nblk + (seg >> 3)) * 144;
                const uint4 hd = __ldg((const uint4 *)blk);
                const uint32_t *q = (const uint32_t *)(blk + 16 + 32 * (j >> 1));
                f.a[mt][h] = (__ldg(q + t) >> shift) & 0x0F0F0F0Fu;
                f.a[mt][2 + h] = (__ldg(q + 4 + t) >> shift) & 0x0F0F0F0Fu;
                float sc, m;
                pi_q4k_scale_min(hd.y, hd.z, hd.w, j, &sc, &m);
                f.s[mt][h] = pi_h2f_bits(hd.x) * sc;
                f.o[mt][h] = pi_h2f_bits(hd.x >> 16) * m;
            } else if constexpr (T == PI_TYPE_Q5_K) {
                /* 176 bytes: as Q4_K's header, then qh[32] at 16 and the nibbles at 48 + 32 (j / 2);
                 * element l's fifth bit is bit j of qh[l]: words t and 4 + t of qh for k in [4t, 4t + 4)
                 * and [16 + 4t, 16 + 4t + 4) */
                const int j = (int)(seg & 7), shift = 4 * (j & 1);
                const uint8_t *blk = w.q + (rows[mt][h] * w.nblk + (seg >> 3)) * 176;
                const uint4 hd = __ldg((const uint4 *)blk);
                const uint32_t *qh = (const uint32_t *)(blk + 16), *q = (const uint32_t *)(blk + 48 + 32 * (j >> 1));
                f.a[mt][h] = ((__ldg(q + t) >> shift) & 0x0F0F0F0Fu) | (((__ldg(qh + t) >> j) & 0x01010101u) << 4);
                f.a[mt][2 + h] =
                    ((__ldg(q + 4 + t) >> shift) & 0x0F0F0F0Fu) | (((__ldg(qh + 4 + t) >> j) & 0x01010101u) << 4);
                float sc, m;
                pi_q4k_scale_min(hd.y, hd.z, hd.w, j, &sc, &m);
                f.s[mt][h] = pi_h2f_bits(hd.x) * sc;
                f.o[mt][h] = pi_h2f_bits(hd.x >> 16) * m;
            } else {
                static_assert(T == PI_TYPE_Q6_K, "no quantised GEMM for this type");
                /* 208 bytes (d in the scale plane): ql[128], qh[64], int8 scales[16]; in half hf and
                 * quarter k of the 256, element l is ((ql[64 hf + 32 (k & 1) + l] >> 4 (k >> 1)) & 15)
                 * | (((qh[32 hf + l] >> 2 k) & 3) << 4), minus 32, times d scales[8 hf + 2 k + l / 16] */
                const int j = (int)(seg & 7), hf = j >> 2, k = j & 3, lsh = 4 * (k >> 1), hsh = 2 * k;
                const int64_t sb = rows[mt][h] * w.nblk + (seg >> 3);
                const uint8_t *blk = w.q + sb * 208;
                const uint32_t *ql = (const uint32_t *)(blk + 64 * hf + 32 * (k & 1)),
                               *qh = (const uint32_t *)(blk + 128 + 32 * hf);
                const uint32_t l0 = __ldg(ql + t), l1 = __ldg(ql + 4 + t), h0 = __ldg(qh + t), h1 = __ldg(qh + 4 + t);
                f.a[mt][h] = pi_u8_minus<32>(((l0 >> lsh) & 0x0F0F0F0Fu) | (((h0 >> hsh) & 0x03030303u) << 4));
                f.a[mt][2 + h] = pi_u8_minus<32>(((l1 >> lsh) & 0x0F0F0F0Fu) | (((h1 >> hsh) & 0x03030303u) << 4));
                const float d = __half2float(w.d[sb]);
                const unsigned short sc2 = __ldg((const unsigned short *)(blk + 192 + 8 * hf + 2 * k));
                f.s[mt][h] = d * (float)(int8_t)(sc2 & 0xff);
                f.o[mt][h] = d * (float)(int8_t)(sc2 >> 8); /* the second half's scale */
            }
        }
    }
}

/* acc (one 16 x 8 tile's four values) += the segment's products: the rows' A fragments a and scales,
 * token values b0, b1 and their xd = {d, d sum q} for tokens 2t, 2t + 1. */
template <int T>
__device__ __forceinline__ void pi_mmq_tile(const pi_mmq_a &f, int mt, uint32_t b0, uint32_t b1, float2 x0, float2 x1,
                                            float (&acc)[4])
{
    if constexpr (T == PI_TYPE_Q6_K || T == PI_TYPE_Q3_K) {
        int c0[4], c1[4];
        pi_mma_s8_k16(f.a[mt][0], f.a[mt][1], b0, c0);
        pi_mma_s8_k16(f.a[mt][2], f.a[mt][3], b1, c1);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i >> 1;
            const float dx = (i & 1) ? x1.x : x0.x;
            acc[i] = fmaf(f.s[mt][h] * dx, pi_i2f_small(c0[i]), acc[i]);
            acc[i] = fmaf(f.o[mt][h] * dx, pi_i2f_small(c1[i]), acc[i]);
        }
    } else {
        int c[4];
        pi_mma_s8(f.a[mt], b0, b1, c);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i >> 1;
            const float2 x = (i & 1) ? x1 : x0;
            acc[i] = fmaf(f.s[mt][h] * x.x, pi_i2f_small(c[i]), acc[i]);
            if constexpr (T == PI_TYPE_Q4_1 || T == PI_TYPE_Q5_1 || T == PI_TYPE_Q4_K || T == PI_TYPE_Q5_K)
                acc[i] = fmaf(-f.o[mt][h], x.y, acc[i]);
        }
    }
}

/* Block (bx, by): rows [32 bx, 32 bx + 32) of W, tokens [64 by, 64 by + 8 NT) of the padded Tp; warp
 * s of KS takes the row's 32-column segments [s nseg / KS, (s + 1) nseg / KS). y (T, ldy): stored, or added to
 * (add). Shared memory: (KS - 1) warps' partials, 2 * NT * 4 * 32 floats each. */
template <int T, int NT>
__global__ void __launch_bounds__(32 * PI_MMQ_MAX_SLICES)
    k_mmq(pi_wdev w, int64_t Tn, int64_t Tp, const int8_t *__restrict__ xq, const float2 *__restrict__ xd,
          float *__restrict__ y, int64_t ldy, int add)
{
    extern __shared__ float part[];
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, s = threadIdx.x >> 5, KS = blockDim.x >> 5;
    const int64_t r0 = (int64_t)blockIdx.x * PI_MMQ_ROWS, n0 = (int64_t)blockIdx.y * PI_MMQ_TOKENS;
    const int ntl = (int)PI_MIN((int64_t)NT, (Tp - n0) >> 3); /* live token tiles of this block */
    int64_t rows[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) rows[mt][h] = PI_MIN(r0 + 16 * mt + 8 * h + g, w.rows - 1);
    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][nt][i] = 0.0f;
    const int64_t nseg = w.cols >> 5, b0 = nseg * s / KS, b1 = nseg * (s + 1) / KS;
    pi_mmq_a cur, nxt;
    if (b0 < b1) pi_mmq_load<T>(w, rows, b0, t, cur);
    for (int64_t b = b0; b < b1; b++) {
        if (b + 1 < b1) pi_mmq_load<T>(w, rows, b + 1, t, nxt); /* the next segment's loads in flight */
        else nxt = cur;
        const uint2 *xb = (const uint2 *)(xq + (b * Tp + n0 + g) * 32) + t;
        const float2 *db = xd + b * Tp + n0 + 2 * t;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            if (nt >= ntl) break;
            const uint2 bv = __ldg(xb + nt * 32);                   /* 8 tokens of 32 bytes further */
            const float4 dx = __ldg((const float4 *)(db + 8 * nt)); /* tokens 2t and 2t + 1 */
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
                pi_mmq_tile<T>(cur, mt, bv.x, bv.y, make_float2(dx.x, dx.y), make_float2(dx.z, dx.w), acc[mt][nt]);
        }
        cur = nxt;
    }
    /* the slices' sums, in warp order: warps 1 .. KS - 1 leave theirs in shared memory (each lane its
     * own words, no bank conflicts), warp 0 adds them to its own */
    if (KS > 1) {
        if (s > 0) {
            float *p = part + (size_t)(s - 1) * (2 * NT * 4 * 32) + lane;
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) p[((mt * NT + nt) * 4 + i) * 32] = acc[mt][nt][i];
        }
        __syncthreads();
        if (s > 0) return;
        for (int k = 1; k < KS; k++) {
            const float *p = part + (size_t)(k - 1) * (2 * NT * 4 * 32) + lane;
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[mt][nt][i] += p[((mt * NT + nt) * 4 + i) * 32];
        }
    }
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int64_t r = r0 + 16 * mt + 8 * (i >> 1) + g, n = n0 + 8 * nt + 2 * t + (i & 1);
                if (r < w.rows && n < Tn) {
                    float *o = y + n * ldy + r;
                    *o = add ? *o + acc[mt][nt][i] : acc[mt][nt][i];
                }
            }
}

/* Slices per row: enough warps for 16 per SM, at most 8, each at least 4 blocks long. A function of
 * the shape and the device only (the batch invariance above). */
static int mmq_slices(const pi_cuda_ctx_t *c, int64_t rows, int64_t nseg)
{
    const int64_t blocks = (rows + PI_MMQ_ROWS - 1) / PI_MMQ_ROWS, want = 16 * (int64_t)c->n_sm;
    int ks = 1;
    while (ks < PI_MMQ_MAX_SLICES && blocks * ks < want && nseg / (2 * ks) >= 4) ks *= 2;
    return ks;
}

template <int T, int NT>
static int launch_mmq(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t Tn, int64_t Tp, const int8_t *xq,
                      const float2 *xd, float *y, int add)
{
    const int ks = mmq_slices(c, w->rows, w->cols / 32);
    const size_t smem = (size_t)(ks - 1) * 2 * NT * 4 * 32 * sizeof(float);
    /* past the default 48 KiB (NT 7 and 8 with 8 slices) the limit is raised, once per device (the
     * attribute is the current device's; devices beyond the table's 16 raise it at every launch) */
    static size_t smem_set[16]; /* the limit raised so far on device i for this instantiation */
    if (smem > 48 * 1024 && (c->dev < 0 || c->dev >= 16 || smem > smem_set[c->dev])) {
        PI_CU(cudaFuncSetAttribute(k_mmq<T, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        if (c->dev >= 0 && c->dev < 16) smem_set[c->dev] = smem;
    }
    const dim3 grid((unsigned)((w->rows + PI_MMQ_ROWS - 1) / PI_MMQ_ROWS),
                    (unsigned)((Tp + PI_MMQ_TOKENS - 1) / PI_MMQ_TOKENS));
    k_mmq<T, NT><<<grid, 32 * ks, smem, c->stream>>>(pi_wdev_of(w), Tn, Tp, xq, xd, y, w->rows, add);
    PI_CU_LAUNCH("k_mmq");
    return 0;
}

template <int T>
static int mmq_nt(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t Tn, int64_t Tp, const int8_t *xq,
                  const float2 *xd, float *y, int add)
{
    switch (Tp >= PI_MMQ_TOKENS ? 8 : (int)(Tp / 8)) {
    case 1: return launch_mmq<T, 1>(c, w, Tn, Tp, xq, xd, y, add);
    case 2: return launch_mmq<T, 2>(c, w, Tn, Tp, xq, xd, y, add);
    case 3: return launch_mmq<T, 3>(c, w, Tn, Tp, xq, xd, y, add);
    case 4: return launch_mmq<T, 4>(c, w, Tn, Tp, xq, xd, y, add);
    case 5: return launch_mmq<T, 5>(c, w, Tn, Tp, xq, xd, y, add);
    case 6: return launch_mmq<T, 6>(c, w, Tn, Tp, xq, xd, y, add);
    case 7: return launch_mmq<T, 7>(c, w, Tn, Tp, xq, xd, y, add);
    default: return launch_mmq<T, 8>(c, w, Tn, Tp, xq, xd, y, add);
    }
}

extern "C" int pi_cuda_mmq(pi_cuda_ctx_t *c, const pi_cuda_weight_t *w, int64_t T, const float *d_X, float *d_Y,
                           int add)
{
    if (!w || !pi_cuda_mmq_for(c, (int)w->type)) {
        pi_error("cuda: quantised GEMM of a %s weight unsupported here", w ? pi_type_name(w->type) : "missing");
        return -PI_ERR_UNSUPPORTED;
    }
    if (T <= 0) {
        pi_error("cuda: quantised GEMM with %lld tokens", (long long)T);
        return -PI_ERR_INVAL;
    }
    const int64_t Tp = (T + PI_CUDA_MMQ_TOK_ALIGN - 1) / PI_CUDA_MMQ_TOK_ALIGN * PI_CUDA_MMQ_TOK_ALIGN,
                  nseg = w->cols / 32;
    if (Tp > 65535) { /* the quantiser's grid.y: in parts (a token's result does not depend on its batch) */
        for (int64_t t0 = 0; t0 < T; t0 += 65528)
            PI_TRY(pi_cuda_mmq(c, w, PI_MIN((int64_t)65528, T - t0), d_X + t0 * w->cols, d_Y + t0 * w->rows, add));
        return 0;
    }
    void *buf = NULL;
    PI_TRY(pi_cuda_scratch(c, PI_CUDA_SCR_X16, pi_cuda_gemm_x16_bytes(T, w->cols), &buf));
    int8_t *xq = (int8_t *)buf;
    float2 *xd = (float2 *)(xq + (size_t)Tp * (size_t)w->cols); /* Tp cols a multiple of 256: aligned */
    const dim3 qgrid((unsigned)((nseg + PI_MMQ_QUANT_THREADS / 32 - 1) / (PI_MMQ_QUANT_THREADS / 32)), (unsigned)Tp);
    k_mmq_quant<<<qgrid, PI_MMQ_QUANT_THREADS, 0, c->stream>>>(T, Tp, nseg, d_X, xq, xd);
    PI_CU_LAUNCH("k_mmq_quant");
    switch (w->type) {
    case PI_TYPE_Q4_0: return mmq_nt<PI_TYPE_Q4_0>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q4_1: return mmq_nt<PI_TYPE_Q4_1>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q5_0: return mmq_nt<PI_TYPE_Q5_0>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q5_1: return mmq_nt<PI_TYPE_Q5_1>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q8_0: return mmq_nt<PI_TYPE_Q8_0>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q3_K: return mmq_nt<PI_TYPE_Q3_K>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q4_K: return mmq_nt<PI_TYPE_Q4_K>(c, w, T, Tp, xq, xd, d_Y, add);
    case PI_TYPE_Q5_K: return mmq_nt<PI_TYPE_Q5_K>(c, w, T, Tp, xq, xd, d_Y, add);
    default: return mmq_nt<PI_TYPE_Q6_K>(c, w, T, Tp, xq, xd, d_Y, add);
    }
}
