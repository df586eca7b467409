/*
 * coordinator/engine-local.c - the in-process engine (coordinator/engine.h): the single-process
 * forward pass of compute/forward.h, used by `--gpu-backend none` and as the reference the pipeline is
 * compared against; and what every engine shares (pi_engine_eval_seq0, pi_engine_destroy).
 */
#include "config.h"
#include "coordinator/engine.h"
#include "lib/common.h"
#include "lib/conf.h"
#include "compute/forward.h"
#include "lib/log.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

struct local_engine {
    struct pi_engine base;
    pi_forward_t *fwd;
    /* sparse execution: the forward pass counts into step, which each eval moves into total under mu
     * (pi-ctl status reads total from another thread) */
    bool sparse;
    struct pi_sparse_stats step, total;
    pthread_mutex_t mu;
};

static int local_eval(pi_engine_t *e, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int n,
                      const int32_t *rows, int n_rows, float *logits)
{
    struct local_engine *l = (struct local_engine *)e;
    if (n < 1 || n > e->max_batch || !tokens || !seq || !pos || pi_forward_rows_check(rows, n_rows, n) != 0 ||
        (n_rows > 0 && !logits))
        return -PI_ERR_INVAL;
    /* the forward pass checks tokens, sequences and positions before it changes anything */
    int rc = pi_forward_batch_rows(l->fwd, tokens, seq, pos, n, rows, n_rows, logits);
    if (l->sparse) {
        pthread_mutex_lock(&l->mu);
        pi_sparse_stats_add(&l->total, &l->step);
        pthread_mutex_unlock(&l->mu);
        pi_sparse_stats_clear(&l->step);
    }
    return rc;
}

static int local_sparse_stats(pi_engine_t *e, struct pi_sparse_stats *out)
{
    struct local_engine *l = (struct local_engine *)e;
    if (!l->sparse) return -PI_ERR_NOTFOUND;
    pthread_mutex_lock(&l->mu);
    pi_sparse_stats_add(out, &l->total);
    pthread_mutex_unlock(&l->mu);
    return 0;
}

static int local_seq_truncate(pi_engine_t *e, int seq, int n)
{
    return pi_forward_seq_truncate(((struct local_engine *)e)->fwd, seq, n);
}

static int local_reset(pi_engine_t *e)
{
    for (int s = 0; s < e->n_seq; s++) pi_forward_seq_reset(((struct local_engine *)e)->fwd, s);
    return 0;
}

static void local_destroy(pi_engine_t *e)
{
    struct local_engine *l = (struct local_engine *)e;
    pi_forward_destroy(&l->fwd);
    pi_sparse_stats_free(&l->step);
    pi_sparse_stats_free(&l->total);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static const struct pi_engine_ops local_ops = {local_eval, local_seq_truncate, local_reset, local_destroy, local_sparse_stats, NULL};

pi_engine_t *pi_engine_local_new(const pi_model_t *m, int n_threads, int n_ctx, int n_seq, int max_batch, const struct pi_predictors *pred,
                                 const float *gate_min, enum pi_sparsity mode, int64_t recall_every)
{
    struct local_engine *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    pthread_mutex_init(&l->mu, NULL);
    struct pi_forward_opts fo;
    pi_forward_opts_default(&fo);
    fo.n_threads = n_threads > 0 ? n_threads : 1;
    if (n_ctx > 0) fo.n_ctx = n_ctx;
    else fo.n_ctx = pi_model_default_ctx(m);
    fo.n_seq = n_seq > 0 ? n_seq : 1;
    fo.n_batch = max_batch > 0 ? max_batch : PI_TUNE_BATCH_DEFAULT; /* lowered by pi_forward_new where n_ctx * n_seq is smaller */
    l->fwd = pi_forward_new(m, &fo);
    const bool gated = gate_min && mode != PI_SPARSITY_OFF;
    l->sparse = (pred && pred->layers && mode != PI_SPARSITY_OFF) || gated;
    if (l->fwd && l->sparse && pi_sparse_stats_init(&l->step, m) == 0 && pi_sparse_stats_init(&l->total, m) == 0 && gated) {
        pi_sparse_stats_gated(&l->step, m);
        pi_sparse_stats_gated(&l->total, m);
    }
    if (!l->fwd || (l->sparse && (!l->step.layers || !l->total.layers)) ||
        (l->sparse && !gated && pi_forward_set_sparse(l->fwd, pred, mode, recall_every, &l->step) != 0) ||
        (gated && pi_forward_set_gate_min(l->fwd, gate_min, &l->step) != 0)) {
        local_destroy(&l->base);
        return NULL;
    }
    l->base.ops = &local_ops;
    l->base.n_vocab = m->hp.n_vocab;
    l->base.max_batch = (int)PI_MIN((int64_t)fo.n_batch, (int64_t)fo.n_ctx * fo.n_seq);
    l->base.n_ctx = fo.n_ctx;
    l->base.n_seq = fo.n_seq;
    return &l->base;
}

int pi_engine_sparse_stats(pi_engine_t *e, struct pi_sparse_stats *out)
{
    return e && e->ops->sparse_stats ? e->ops->sparse_stats(e, out) : -PI_ERR_NOTFOUND;
}

int pi_engine_eval_seq0(pi_engine_t *e, const int32_t *tokens, int n, int pos0, float *logits, int n_out)
{
    if (n < 1 || n > e->max_batch || (n_out != 0 && n_out != 1 && n_out != n) || pos0 < 0 || pos0 > INT32_MAX - n)
        return -PI_ERR_INVAL;
    int32_t *a = malloc((size_t)n * 3 * sizeof *a);
    if (!a) return -PI_ERR_NOMEM;
    int32_t *seq = a, *pos = a + n, *rows = a + 2 * n;
    for (int i = 0; i < n; i++) {
        seq[i] = 0;
        pos[i] = pos0 + i;
    }
    for (int k = 0; k < n_out; k++) rows[k] = n - n_out + k; /* the last n_out rows */
    int rc = e->ops->eval(e, tokens, seq, pos, n, n_out ? rows : NULL, n_out, n_out ? logits : NULL);
    free(a);
    return rc;
}

/* Keep the first n positions of sequence 0 (0: reset the whole engine). */
int pi_engine_truncate(pi_engine_t *e, int n)
{
    if (n == 0) return e->ops->reset(e);
    return e->ops->seq_truncate(e, 0, n);
}

void pi_engine_destroy(pi_engine_t **e)
{
    if (!e || !*e) return;
    (*e)->ops->destroy(*e);
    *e = NULL;
}
