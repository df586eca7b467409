/*
 * compute/predictor.c - the activation predictors' sources and their evaluation (compute/predictor.h).
 */
#include "config.h"
#include "compute/predictor.h"
#include "kernels/cpu/matvec.h"
#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* n rounded up to a multiple of 64 (the set's weights start on cache lines) */
#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

static const char *const sparsity_names[PI_SPARSITY_MODES] = {"off", "safe", "aggressive"};

int pi_sparsity_parse(const char *s, enum pi_sparsity *out)
{
    for (int i = 0; s && i < PI_SPARSITY_MODES; i++)
        if (strcasecmp(s, sparsity_names[i]) == 0) {
            *out = (enum pi_sparsity)i;
            return 0;
        }
    return -PI_ERR_INVAL;
}

const char *pi_sparsity_name(enum pi_sparsity s)
{
    return (unsigned)s < PI_SPARSITY_MODES ? sparsity_names[s] : "?";
}

int pi_predictors_from_model(const pi_model_t *m, struct pi_predictors *out)
{
    memset(out, 0, sizeof *out);
    const struct pi_hparams *hp = &m->hp;
    for (int il = 0; il < hp->n_layer; il++)
        if (!m->layers[il].fc1.data) return -PI_ERR_NOTFOUND;
    struct pi_predictor_layer *L = calloc((size_t)hp->n_layer, sizeof *L);
    if (!L) return -PI_ERR_NOMEM;
    float thr = hp->has_sparse_threshold ? hp->sparse_threshold : 0.0f;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *ml = &m->layers[il];
        if (!pi_kernel_supported(ml->fc1.type) || !pi_kernel_supported(ml->fc2.type)) {
            pi_error("layer %d: predictor types %s/%s have no CPU kernel", il, pi_type_name(ml->fc1.type),
                     pi_type_name(ml->fc2.type));
            free(L);
            return -PI_ERR_UNSUPPORTED;
        }
        L[il].rank = ml->fc1.rows;
        L[il].fc1 = ml->fc1;
        L[il].fc2 = ml->fc2;
        for (int k = 0; k < PI_SPARSITY_MODES; k++) L[il].threshold[k] = thr;
        if (L[il].rank > out->rank_max) out->rank_max = L[il].rank;
    }
    out->n_layer = hp->n_layer;
    out->n_embd = hp->n_embd;
    out->n_ff = hp->n_ff;
    out->layers = L;
    out->owned = L;
    out->on_residual = true;
    snprintf(out->source, sizeof out->source, "model");
    return 0;
}

int pi_predictors_from_sidecar(const struct pi_sidecar *s, struct pi_predictors *out)
{
    memset(out, 0, sizeof *out);
    if (!s->pred) return -PI_ERR_NOTFOUND;
    size_t head = ALIGN64((size_t)s->n_layer * sizeof(struct pi_predictor_layer)), total = head;
    uint64_t b1[2], b2[2];
    for (int il = 0; il < s->n_layer; il++) {
        const struct pi_sidecar_pred *sp = &s->pred[il];
        PI_ASSERT(sp->fc1 && sp->fc2); /* loaded by pi_sidecar_load_pred */
        PI_ASSERT(pi_type_row_bytes(sp->type, (uint64_t)s->n_embd, &b1[0]) &&
                  pi_type_row_bytes(sp->type, (uint64_t)sp->rank, &b2[0]));
        total += ALIGN64((size_t)(b1[0] * (uint64_t)sp->rank)) + ALIGN64((size_t)(b2[0] * (uint64_t)s->n_ff));
    }
    void *mem = NULL;
    if (posix_memalign(&mem, 64, total) != 0) return -PI_ERR_NOMEM;
    struct pi_predictor_layer *L = mem;
    char *at = (char *)mem + head;
    for (int il = 0; il < s->n_layer; il++) {
        const struct pi_sidecar_pred *sp = &s->pred[il];
        pi_type_row_bytes(sp->type, (uint64_t)s->n_embd, &b1[0]);
        pi_type_row_bytes(sp->type, (uint64_t)sp->rank, &b2[0]);
        b1[1] = b1[0] * (uint64_t)sp->rank;
        b2[1] = b2[0] * (uint64_t)s->n_ff;
        L[il] = (struct pi_predictor_layer){.rank = sp->rank};
        L[il].fc1 = (struct pi_weight){sp->type, sp->rank, s->n_embd, (size_t)b1[0], memcpy(at, sp->fc1, b1[1]), NULL, NULL, NULL};
        at += ALIGN64((size_t)b1[1]);
        L[il].fc2 = (struct pi_weight){sp->type, s->n_ff, sp->rank, (size_t)b2[0], memcpy(at, sp->fc2, b2[1]), NULL, NULL, NULL};
        at += ALIGN64((size_t)b2[1]);
        L[il].threshold[PI_SPARSITY_OFF] = L[il].threshold[PI_SPARSITY_SAFE] = sp->threshold[0];
        L[il].threshold[PI_SPARSITY_AGGRESSIVE] = sp->threshold[1];
        if (sp->rank > out->rank_max) out->rank_max = sp->rank;
    }
    out->n_layer = s->n_layer;
    out->n_embd = s->n_embd;
    out->n_ff = s->n_ff;
    out->layers = L;
    out->owned = mem;
    snprintf(out->source, sizeof out->source, "sidecar");
    return 0;
}

int pi_predictors_open(const pi_model_t *m, const char *sidecar_path, struct pi_predictors *out)
{
    memset(out, 0, sizeof *out);
    if (sidecar_path) {
        struct pi_sidecar *s = NULL;
        char err[256];
        int rc = pi_sidecar_load_pred(sidecar_path, m, &s, err, sizeof err);
        if (rc < 0 && rc != -PI_ERR_NOTFOUND) {
            pi_error("sidecar %s: %s", sidecar_path, err);
            return rc;
        }
        rc = s ? pi_predictors_from_sidecar(s, out) : -PI_ERR_NOTFOUND;
        pi_sidecar_destroy(&s);
        if (rc != -PI_ERR_NOTFOUND) return rc;
    }
    return pi_predictors_from_model(m, out);
}

void pi_predictors_free(struct pi_predictors *p)
{
    if (!p) return;
    if (p->owned != p->layers) free(p->layers);
    free(p->owned);
    memset(p, 0, sizeof *p);
}

size_t pi_predictor_scratch(const struct pi_predictors *p, int64_t n)
{
    return (size_t)n * (size_t)(p->rank_max + p->n_ff);
}

int64_t pi_predictor_eval(pi_pool_t *pool, const struct pi_predictors *p, int il, enum pi_sparsity mode,
                          const float *X, int64_t n, float *scratch, uint64_t *mask, int64_t mask_words)
{
    PI_ASSERT(il >= 0 && il < p->n_layer && n >= 1 && mask_words * 64 >= p->n_ff && mode != PI_SPARSITY_OFF);
    const struct pi_predictor_layer *L = &p->layers[il];
    const int64_t ff = p->n_ff;
    memset(mask, 0, (size_t)n * (size_t)mask_words * sizeof *mask);
    if (L->rank == 0) {
        for (int64_t t = 0; t < n; t++)
            for (int64_t j = 0; j < ff; j++) mask[t * mask_words + j / 64] |= UINT64_C(1) << (j % 64);
        return n * ff;
    }
    float *h = scratch, *logit = scratch + (size_t)n * (size_t)L->rank;
    if (n == 1) pi_matvec(pool, L->fc1.type, L->fc1.data, L->rank, p->n_embd, X, h);
    else pi_matmul(pool, L->fc1.type, L->fc1.data, L->rank, p->n_embd, X, n, h);
    for (int64_t i = 0; i < n * L->rank; i++) h[i] = h[i] > 0.0f ? h[i] : 0.0f;
    if (n == 1) pi_matvec(pool, L->fc2.type, L->fc2.data, ff, L->rank, h, logit);
    else pi_matmul(pool, L->fc2.type, L->fc2.data, ff, L->rank, h, n, logit);
    const float thr = L->threshold[mode];
    int64_t active = 0;
    for (int64_t t = 0; t < n; t++) {
        const float *lt = logit + (size_t)t * (size_t)ff;
        uint64_t *row = mask + (size_t)t * (size_t)mask_words;
        for (int64_t j = 0; j < ff; j++)
            if (lt[j] >= thr) {
                row[j / 64] |= UINT64_C(1) << (j % 64);
                active++;
            }
    }
    return active;
}
