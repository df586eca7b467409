/*
 * compute/kv-cache.c - per-sequence key/value storage for attention (see compute/kv-cache.h).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/common.h"
#include "compute/kv-cache.h"
#include "lib/log.h"
#include "kernels/cpu/quant.h"

struct pi_kv {
    int n_layer, kv_dim, n_ctx, n_seq;
    enum pi_type type;
    size_t row_bytes;  /* kv_dim * element size */
    size_t half_bytes; /* n_layer * n_ctx * row_bytes: the K (or V) part of one sequence */
    char **seq_mem;    /* (n_seq) K then V of each sequence, NULL until used */
    int *len;          /* (n_seq) positions filled */
};

/* Bytes of physical memory (SIZE_MAX when unknown). */
static size_t phys_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t total;
    if (pages <= 0 || page <= 0 || !pi_size_mul((size_t)pages, (size_t)page, &total)) return SIZE_MAX;
    return total;
}

pi_kv_t *pi_kv_new(int n_layer, int kv_dim, int n_ctx, int n_seq, enum pi_type type)
{
    size_t half, all;
    if (n_layer < 1 || kv_dim < 1 || n_ctx < 1 || n_seq < 1 ||
        (type != PI_TYPE_F32 && type != PI_TYPE_F16)) {
        pi_error("kv: bad cache geometry (layers %d, kv_dim %d, ctx %d, seqs %d, type %s)", n_layer, kv_dim,
                 n_ctx, n_seq, pi_type_name(type));
        return NULL;
    }
    size_t row = (size_t)kv_dim * (type == PI_TYPE_F32 ? 4 : 2);
    if (!pi_size_mul(row, (size_t)n_ctx, &half) || !pi_size_mul(half, (size_t)n_layer, &half) ||
        half > SIZE_MAX / 2) {
        pi_error("kv: cache of %d layers x %d positions x %d too large", n_layer, n_ctx, kv_dim);
        return NULL;
    }
    /* Sequences are allocated on first use, but a cache that could not hold all of them in RAM is
     * refused now, with the numbers, rather than failing (or being OOM-killed) mid-request: n_ctx
     * often comes from a file's context_length, which may be 128K or absurd. */
    if (!pi_size_mul(2 * half, (size_t)n_seq, &all) || all > phys_bytes()) {
        pi_error("kv: cache of %d sequences x %d positions (%d layers x kv_dim %d, %s) needs %.1f GiB, more "
                 "than the %.1f GiB of RAM; use a smaller context (n_ctx) or fewer sequences",
                 n_seq, n_ctx, n_layer, kv_dim, pi_type_name(type),
                 2.0 * (double)half * n_seq / (1024.0 * 1024 * 1024), (double)phys_bytes() / (1024.0 * 1024 * 1024));
        return NULL;
    }
    pi_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    *kv = (struct pi_kv){n_layer, kv_dim, n_ctx, n_seq, type, row, half, NULL, NULL};
    kv->seq_mem = calloc((size_t)n_seq, sizeof *kv->seq_mem);
    kv->len = calloc((size_t)n_seq, sizeof *kv->len);
    if (!kv->seq_mem || !kv->len) pi_kv_destroy(&kv);
    return kv;
}

void pi_kv_destroy(pi_kv_t **pkv)
{
    pi_kv_t *kv = pkv ? *pkv : NULL;
    if (!kv) return;
    for (int s = 0; kv->seq_mem && s < kv->n_seq; s++) free(kv->seq_mem[s]);
    free(kv->seq_mem);
    free(kv->len);
    free(kv);
    *pkv = NULL;
}

int pi_kv_n_ctx(const pi_kv_t *kv) { return kv->n_ctx; }
int pi_kv_n_seq(const pi_kv_t *kv) { return kv->n_seq; }
enum pi_type pi_kv_type(const pi_kv_t *kv) { return kv->type; }
size_t pi_kv_row_bytes(const pi_kv_t *kv) { return kv->row_bytes; }

int pi_kv_reserve(pi_kv_t *kv, int seq)
{
    if (seq < 0 || seq >= kv->n_seq) {
        pi_error("kv: sequence %d out of range [0, %d)", seq, kv->n_seq);
        return -PI_ERR_RANGE;
    }
    if (kv->seq_mem[seq]) return 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, 2 * kv->half_bytes) != 0) {
        pi_error("kv: out of memory for sequence %d (%zu bytes)", seq, 2 * kv->half_bytes);
        return -PI_ERR_NOMEM;
    }
    kv->seq_mem[seq] = p;
    kv->len[seq] = 0;
    return 0;
}

int pi_kv_len(const pi_kv_t *kv, int seq)
{
    PI_ASSERT(seq >= 0 && seq < kv->n_seq);
    return kv->len[seq];
}

void pi_kv_set_len(pi_kv_t *kv, int seq, int n)
{
    PI_ASSERT(seq >= 0 && seq < kv->n_seq && n >= 0 && n <= kv->n_ctx);
    PI_ASSERT(n == 0 || kv->seq_mem[seq]);
    kv->len[seq] = n;
}

static char *row_at(pi_kv_t *kv, int seq, int layer, int pos, int which)
{
    PI_ASSERT(seq >= 0 && seq < kv->n_seq && kv->seq_mem[seq]);
    PI_ASSERT(layer >= 0 && layer < kv->n_layer && pos >= 0 && pos < kv->n_ctx);
    return kv->seq_mem[seq] + (size_t)which * kv->half_bytes +
           ((size_t)layer * (size_t)kv->n_ctx + (size_t)pos) * kv->row_bytes;
}

void *pi_kv_k(pi_kv_t *kv, int seq, int layer, int pos) { return row_at(kv, seq, layer, pos, 0); }
void *pi_kv_v(pi_kv_t *kv, int seq, int layer, int pos) { return row_at(kv, seq, layer, pos, 1); }

void pi_kv_store(pi_kv_t *kv, int seq, int layer, int pos, const float *k, const float *v)
{
    char *kr = row_at(kv, seq, layer, pos, 0), *vr = row_at(kv, seq, layer, pos, 1);
    if (kv->type == PI_TYPE_F32) {
        memcpy(kr, k, kv->row_bytes);
        memcpy(vr, v, kv->row_bytes);
        return;
    }
    uint16_t *kh = (uint16_t *)kr, *vh = (uint16_t *)vr;
    for (int j = 0; j < kv->kv_dim; j++) {
        kh[j] = pi_fp32_to_fp16(k[j]);
        vh[j] = pi_fp32_to_fp16(v[j]);
    }
}
