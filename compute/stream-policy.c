/*
 * compute/stream-policy.c - the prompt-streaming decision (compute/stream-policy.h): the cost model
 * and its running measurement of the CPU workers.
 */
#include "config.h"
#include "compute/stream-policy.h"
#include "lib/common.h"

#include <stdlib.h>
#include <string.h>

/* The file's bytes of weight w (rows of pi_type_row_bytes each); 0 for a shape the type cannot hold. */
static uint64_t weight_bytes(const struct pi_weight *w)
{
    uint64_t rb = 0;
    if (w->rows < 0 || !pi_type_row_bytes(w->type, (uint64_t)w->cols, &rb)) return 0;
    return rb * (uint64_t)w->rows;
}

int pi_stream_policy_init(struct pi_stream_policy *p, const pi_model_t *m, const int64_t *n_hot,
                          enum pi_tune_prompt_stream mode, double h2d_bps)
{
    const struct pi_hparams *hp = &m->hp;
    memset(p, 0, sizeof *p);
    p->mode = mode;
    p->n_layer = hp->n_layer;
    p->h2d_bps = h2d_bps > 0 ? h2d_bps : 0;
    p->flops_tok = 6.0 * (double)hp->n_embd * (double)hp->n_ff;
    p->cold = calloc((size_t)hp->n_layer, sizeof *p->cold);
    p->bytes = calloc((size_t)hp->n_layer, sizeof *p->bytes);
    if (!p->cold || !p->bytes) {
        pi_stream_policy_free(p);
        return -PI_ERR_NOMEM;
    }
    int64_t cold_sum = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        const int64_t c = hp->n_ff - (n_hot ? n_hot[il] : 0);
        p->cold[il] = c > 0;
        p->bytes[il] = weight_bytes(&L->ffn_gate) + weight_bytes(&L->ffn_up) + weight_bytes(&L->ffn_down);
        if (c > 0) cold_sum += c, p->n_cold++;
    }
    /* the default: the mean cold layer's neurons at PI_STREAM_CPU_FLOPS */
    const double cold_mean = p->n_cold ? (double)cold_sum / (double)p->n_cold : 0.0;
    p->cpu_ns_tok = 6.0 * (double)hp->n_embd * cold_mean / PI_STREAM_CPU_FLOPS * 1e9;
    return 0;
}

void pi_stream_policy_free(struct pi_stream_policy *p)
{
    free(p->cold);
    free(p->bytes);
    p->cold = NULL;
    p->bytes = NULL;
    p->n_layer = 0;
}

bool pi_stream_policy_is_prompt(const int32_t *seq, const int32_t *pos, int n)
{
    for (int i = 1; i < n; i++)
        if (seq[i] == seq[i - 1] && pos[i] == pos[i - 1] + 1) return true;
    return false;
}

void pi_stream_policy_model(const struct pi_stream_policy *p, int n, double *stream_ns, double *cpu_ns)
{
    double st = 0, cpu = 0;
    const double compute = p->flops_tok * (double)n / PI_STREAM_GPU_FLOPS * 1e9;
    for (int il = 0; il < p->n_layer; il++) {
        if (!p->cold[il]) continue;
        const double copy = p->h2d_bps > 0 ? (double)p->bytes[il] / p->h2d_bps * 1e9 : 1e300;
        st += PI_MAX(copy, compute);
        cpu += (double)n * p->cpu_ns_tok;
    }
    *stream_ns = st;
    *cpu_ns = cpu;
}

bool pi_stream_policy_decide(const struct pi_stream_policy *p, const int32_t *seq, const int32_t *pos, int n)
{
    if (!p->cold || p->n_cold == 0 || p->mode == PI_TUNE_PROMPT_STREAM_OFF || !pi_stream_policy_is_prompt(seq, pos, n))
        return false;
    if (p->mode == PI_TUNE_PROMPT_STREAM_ON) return true;
    if (p->h2d_bps <= 0) return false; /* nothing to stream over */
    double st, cpu;
    pi_stream_policy_model(p, n, &st, &cpu);
    return st < cpu;
}

void pi_stream_policy_note(struct pi_stream_policy *p, int n, int64_t ns)
{
    if (n < PI_STREAM_MEASURE_ROWS || ns <= 0) return;
    const double v = (double)ns / (double)n;
    p->cpu_ns_tok = p->measured ? 0.5 * p->cpu_ns_tok + 0.5 * v : v;
    p->measured = true;
}
