/*
 * compute/predictor-train-cuda.c - the predictor trainer's cuda engine (compute/predictor-train-cuda.h):
 * struct pi_ptrain_engine's operations on CUDA device 0, over kernels/cuda/ptrain.h. Built into the
 * module pinfer-cuda.so only; the training policy that calls it is compute/predictor-train.c's.
 *
 * DESIGN. Device memory, all from the context's budget (the device's free memory at creation less
 * 256 MiB, kernels/cuda/cuda.h):
 *   - a layer's sets, uploaded once when the layer is bound: x (cap, n_embd) f32 and the masks
 *     (cap, mw) of both the training and the held-out set, sized for the reservoirs' capacity;
 *   - the current rank's network: p, g, m, v, best, np = r n_embd + n_ff r floats each (W1 then W2, the
 *     host's layout), reallocated when the rank changes;
 *   - scratch: the gathered rows X (B, n_embd), H and A (R, r), the logits Z (R, n_ff), dA (B, r), with B
 *     the step's rows and R = max(B, the held-out chunk of up to 512 rows), and the held-out set's
 *     per-row losses (double).
 * A step is the host's five products and passes (compute/predictor-train.c, batch_loss_grad) in the same
 * order on the compute stream: gather, H = X W1^T, A = relu(H), Z = A W2^T, dZ, dW2 = dZ^T A, dA = dZ W2,
 * dH, dW1 = dH^T X, Adam. Nothing waits for the device but the held-out loss (its per-row sums come
 * back and are added on the host in row order) and read; the row indices of each step reach the device
 * through the index ring, so the host stays a few steps ahead.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/predictor-train-cuda.h"
#include "kernels/cuda/cuda.h"
#include "kernels/cuda/ptrain.h"
#include "lib/common.h"
#include "lib/log.h"

#define HELDOUT_ROWS 512 /* held-out rows a forward pass takes at the most */

/* Propagate a negative return (as compute/backend-cuda.c). */
#define PI_TRY(expr)                                                                                                   \
    do {                                                                                                               \
        int r_ = (expr);                                                                                               \
        if (r_ < 0) return r_;                                                                                         \
    } while (0)

struct cuda_engine {
    pi_cuda_ctx_t *cu;
    pi_cuda_idx_ring_t *ring;
    const struct pi_ptrain_samples *s;
    int64_t d, ff, mw, batch;
    int il;            /* the bound layer, -1 before the first */
    int64_t nt, nh;    /* its rows (the samples' n when it was bound) */
    float *x[2];       /* (cap[k], d) the bound layer's inputs, per set */
    uint64_t *mask[2]; /* (cap[k], mw) its masks */
    double *rowloss;   /* (cap[1]) per-row held-out losses, device */
    double *h_rowloss; /* (cap[1]) host */
    /* the current rank (0: none) */
    int64_t r, np, B, R;         /* B: a step's rows, R: scratch rows */
    float *p, *g, *m, *v, *best; /* (np) */
    float *X, *dA;               /* (B, d), (B, r) */
    float *H, *A, *Z;            /* (R, r), (R, r), (R, ff) */
};

static double mib(size_t b) { return (double)b / 1048576.0; }

/* 0 when bytes more fit the context's budget; else -PI_ERR_NOMEM with what and the figures logged. */
static int fits(struct cuda_engine *c, size_t bytes, const char *what)
{
    size_t budget = 0, used = 0;
    pi_cuda_ctx_usage(c->cu, &budget, &used, NULL, NULL);
    if (bytes <= budget - used) return 0;
    pi_error("predictor training (cuda): %s needs %.1f MiB of device memory; %.1f MiB are free (of %.1f MiB usable, "
             "%.1f MiB held): train on the cpu, or with fewer samples or a lower rank",
             what, mib(bytes), mib(budget - used), mib(budget), mib(used));
    return -PI_ERR_NOMEM;
}

/* Allocate n pointers' worth of buffers: sizes[i] bytes into *ptrs[i]; on failure the ones made are freed. */
static int alloc_all(struct cuda_engine *c, int n, void **const ptrs[], const size_t sizes[])
{
    for (int i = 0; i < n; i++) {
        int rc = pi_cuda_alloc(c->cu, sizes[i] ? sizes[i] : 1, ptrs[i]);
        if (rc < 0) {
            for (int k = 0; k < i; k++) {
                (void)pi_cuda_free(c->cu, *ptrs[k]);
                *ptrs[k] = NULL;
            }
            return rc;
        }
    }
    return 0;
}

static void rank_free(struct cuda_engine *c)
{
    float **bufs[] = {&c->p, &c->g, &c->m, &c->v, &c->best, &c->X, &c->dA, &c->H, &c->A, &c->Z};
    for (size_t i = 0; i < PI_ARRAY_LEN(bufs); i++) {
        (void)pi_cuda_free(c->cu, *bufs[i]);
        *bufs[i] = NULL;
    }
    c->r = c->np = 0;
}

static int cu_layer(void *ctx, int il)
{
    struct cuda_engine *c = ctx;
    const struct pi_ptrain_samples *s = c->s;
    PI_ASSERT(il >= 0 && il < s->n_layer);
    for (int k = 0; k < 2; k++) {
        const size_t rows = (size_t)s->n[k], base = (size_t)il * (size_t)s->cap[k];
        PI_ASSERT(s->n[k] <= s->cap[k]);
        int rc = pi_cuda_upload(c->cu, c->x[k], s->x[k] + base * (size_t)c->d, rows * (size_t)c->d * sizeof(float));
        if (rc == 0)
            rc = pi_cuda_upload(c->cu, c->mask[k], s->mask[k] + base * (size_t)c->mw,
                                rows * (size_t)c->mw * sizeof(uint64_t));
        if (rc < 0) return rc;
    }
    c->il = il;
    c->nt = s->n[PI_PTRAIN_TRAIN];
    c->nh = s->n[PI_PTRAIN_HELDOUT];
    return 0;
}

static int cu_init(void *ctx, int64_t r, const float *p0)
{
    struct cuda_engine *c = ctx;
    const int64_t np = r * c->d + c->ff * r, B = pi_ptrain_step_rows(c->s, c->batch);
    const int64_t R = PI_MAX(B, PI_MIN(c->nh, HELDOUT_ROWS));
    PI_ASSERT(c->il >= 0 && r >= 1);
    if (r != c->r || B != c->B || R != c->R) {
        rank_free(c);
        const size_t f = sizeof(float), fnp = (size_t)np * f;
        /* p, g, m, v, best (np); X (B, d); dA (B, r); H, A (R, r); Z (R, ff) */
        const size_t sizes[] = {fnp,
                                fnp,
                                fnp,
                                fnp,
                                fnp,
                                (size_t)(B * c->d) * f,
                                (size_t)(B * r) * f,
                                (size_t)(R * r) * f,
                                (size_t)(R * r) * f,
                                (size_t)(R * c->ff) * f};
        void **const ptrs[] = {(void **)&c->p, (void **)&c->g,  (void **)&c->m, (void **)&c->v, (void **)&c->best,
                               (void **)&c->X, (void **)&c->dA, (void **)&c->H, (void **)&c->A, (void **)&c->Z};
        size_t total = 0;
        for (size_t i = 0; i < PI_ARRAY_LEN(sizes); i++) total += pi_cuda_counted(sizes[i]);
        char what[96];
        snprintf(what, sizeof what, "rank %lld (weights, gradient, Adam's moments, scratch)", (long long)r);
        int rc = fits(c, total, what);
        if (rc < 0 || (rc = alloc_all(c, (int)PI_ARRAY_LEN(sizes), ptrs, sizes)) < 0) return rc;
        c->r = r, c->np = np, c->B = B, c->R = R;
    }
    int rc = pi_cuda_upload(c->cu, c->p, p0, (size_t)np * sizeof(float));
    if (rc == 0) rc = pi_cuda_ptrain_copy(c->cu, c->best, c->p, (size_t)np * sizeof(float));
    if (rc == 0) rc = pi_cuda_memset(c->cu, c->m, 0, (size_t)np * sizeof(float));
    if (rc == 0) rc = pi_cuda_memset(c->cu, c->v, 0, (size_t)np * sizeof(float));
    return rc;
}

/* Z (n, ff) = relu(X W1^T) W2^T for rows X (n, d), keeping H and A. */
static int forward(struct cuda_engine *c, const float *X, int64_t n)
{
    const int64_t r = c->r, d = c->d, ff = c->ff;
    const float *W1 = c->p, *W2 = c->p + r * d;
    PI_TRY(pi_cuda_sgemm(c->cu, false, true, n, r, d, X, d, W1, d, c->H, r)); /* H = X W1^T */
    PI_TRY(pi_cuda_ptrain_relu(c->cu, n * r, c->H, c->A));
    return pi_cuda_sgemm(c->cu, false, true, n, ff, r, c->A, r, W2, r, c->Z, ff); /* Z = A W2^T */
}

static int cu_step(void *ctx, const int64_t *idx, int64_t n, float lr_t, float pos_weight)
{
    struct cuda_engine *c = ctx;
    const int64_t r = c->r, d = c->d, ff = c->ff;
    const float *W2 = c->p + r * d;
    float *g1 = c->g, *g2 = c->g + r * d;
    const int64_t *d_idx = NULL;
    PI_ASSERT(c->np > 0 && n >= 1 && n <= c->B);
    PI_TRY(pi_cuda_idx_ring_put(c->cu, c->ring, idx, n, &d_idx));
    PI_TRY(pi_cuda_ptrain_gather(c->cu, c->x[PI_PTRAIN_TRAIN], d, d_idx, n, c->X));
    PI_TRY(forward(c, c->X, n));
    const float scale = 1.0f / (float)((double)n * (double)ff); /* bce_rows' mean */
    PI_TRY(pi_cuda_ptrain_bce_grad(c->cu, c->Z, n, ff, c->mask[PI_PTRAIN_TRAIN], c->mw, d_idx, pos_weight, scale));
    PI_TRY(pi_cuda_sgemm(c->cu, true, false, ff, r, n, c->Z, ff, c->A, r, g2, r));   /* dW2 = dZ^T A */
    PI_TRY(pi_cuda_sgemm(c->cu, false, false, n, r, ff, c->Z, ff, W2, r, c->dA, r)); /* dA = dZ W2 */
    PI_TRY(pi_cuda_ptrain_relu_grad(c->cu, n * r, c->dA, c->H));                     /* dH */
    PI_TRY(pi_cuda_sgemm(c->cu, true, false, r, d, n, c->H, r, c->X, d, g1, d));     /* dW1 = dH^T X */
    return pi_cuda_ptrain_adam(c->cu, c->np, c->p, c->g, c->m, c->v, lr_t, PI_PTRAIN_ADAM_B1, PI_PTRAIN_ADAM_B2,
                               PI_PTRAIN_ADAM_EPS);
}

static int cu_heldout_loss(void *ctx, float pos_weight, double *loss)
{
    struct cuda_engine *c = ctx;
    const int64_t nh = c->nh, d = c->d;
    PI_ASSERT(c->np > 0 && nh >= 1);
    for (int64_t b = 0; b < nh; b += c->R) {
        int64_t n = PI_MIN(c->R, nh - b);
        PI_TRY(forward(c, c->x[PI_PTRAIN_HELDOUT] + b * d, n));
        PI_TRY(pi_cuda_ptrain_bce_loss(c->cu, c->Z, n, c->ff, c->mask[PI_PTRAIN_HELDOUT], c->mw, b, pos_weight,
                                       c->rowloss + b));
    }
    PI_TRY(pi_cuda_download(c->cu, c->h_rowloss, c->rowloss, (size_t)nh * sizeof(double)));
    double sum = 0;
    for (int64_t i = 0; i < nh; i++) sum += c->h_rowloss[i];
    *loss = sum / ((double)nh * (double)c->ff);
    return 0;
}

static int cu_save_best(void *ctx)
{
    struct cuda_engine *c = ctx;
    return pi_cuda_ptrain_copy(c->cu, c->best, c->p, (size_t)c->np * sizeof(float));
}

static int cu_read(void *ctx, int buf, float *host)
{
    struct cuda_engine *c = ctx;
    const float *src = buf == PI_PTRAIN_BUF_W ? c->p : buf == PI_PTRAIN_BUF_GRAD ? c->g : c->best;
    PI_ASSERT(c->np > 0 && buf >= PI_PTRAIN_BUF_W && buf <= PI_PTRAIN_BUF_BEST);
    return pi_cuda_download(c->cu, host, src, (size_t)c->np * sizeof(float));
}

static void cu_destroy(void *ctx)
{
    struct cuda_engine *c = ctx;
    if (!c) return;
    pi_cuda_idx_ring_destroy(c->cu, &c->ring);
    pi_cuda_ctx_destroy(&c->cu); /* frees every device allocation */
    free(c->h_rowloss);
    free(c);
}

/* The layer sets' buffers and the ring. */
static int sets_alloc(struct cuda_engine *c)
{
    const struct pi_ptrain_samples *s = c->s;
    const size_t sizes[] = {(size_t)(s->cap[0] * c->d) * sizeof(float), (size_t)(s->cap[1] * c->d) * sizeof(float),
                            (size_t)(s->cap[0] * c->mw) * sizeof(uint64_t),
                            (size_t)(s->cap[1] * c->mw) * sizeof(uint64_t), (size_t)s->cap[1] * sizeof(double)};
    void **const ptrs[] = {(void **)&c->x[0], (void **)&c->x[1], (void **)&c->mask[0], (void **)&c->mask[1],
                           (void **)&c->rowloss};
    size_t total = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(sizes); i++) total += pi_cuda_counted(sizes[i]);
    char what[128];
    snprintf(what, sizeof what, "a layer's samples (%lld training and %lld held-out rows)", (long long)s->cap[0],
             (long long)s->cap[1]);
    PI_TRY(fits(c, total, what));
    PI_TRY(alloc_all(c, (int)PI_ARRAY_LEN(sizes), ptrs, sizes));
    if (!(c->h_rowloss = malloc((size_t)s->cap[1] * sizeof(double)))) {
        pi_error("predictor training (cuda): out of host memory");
        return -PI_ERR_NOMEM;
    }
    return pi_cuda_idx_ring_new(c->cu, PI_MAX(c->batch, 1), &c->ring);
}

int pi_ptrain_cuda_new(const struct pi_ptrain_samples *s, int64_t batch, struct pi_ptrain_engine *e, char *why,
                       size_t why_len)
{
    int n = pi_cuda_device_count();
    if (n <= 0) {
        snprintf(why, why_len, "no CUDA device (%s)", n == 0 ? "the driver reports none" : "no driver or device node");
        return -PI_ERR_DEVICE;
    }
    struct cuda_engine *c = calloc(1, sizeof *c);
    if (!c) {
        pi_error("predictor training (cuda): out of host memory");
        return -PI_ERR_NOMEM;
    }
    c->s = s, c->d = s->n_embd, c->ff = s->n_ff, c->mw = s->mask_words, c->batch = batch, c->il = -1;
    char dev[160] = "?";
    int rc = pi_cuda_device_describe(0, dev, sizeof dev);
    if (rc == 0 && !(c->cu = pi_cuda_ctx_new(0, 0, NULL))) rc = -PI_ERR_DEVICE;
    if (rc == 0) rc = sets_alloc(c);
    if (rc < 0) {
        snprintf(why, why_len, "the cuda engine could not start (logged above)");
        cu_destroy(c);
        return rc;
    }
    e->ctx = c;
    snprintf(e->desc, sizeof e->desc, "cuda: %s", dev);
    e->layer = cu_layer, e->init = cu_init, e->step = cu_step, e->heldout_loss = cu_heldout_loss;
    e->save_best = cu_save_best, e->read = cu_read, e->destroy = cu_destroy;
    return 0;
}
