/*
 * compute/stream-policy.c - the prompt-streaming decision (compute/stream-policy.h): the rule for
 * which configurations may stream, the cost model and its running measurements of the CPU workers and
 * of the streamed steps.
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

enum pi_tune_prompt_stream pi_stream_policy_mode(enum pi_tune_prompt_stream asked, bool predictors, bool thresholds)
{
    return predictors || thresholds ? PI_TUNE_PROMPT_STREAM_OFF : asked;
}

int pi_stream_policy_init(struct pi_stream_policy *p, const pi_model_t *m, const int64_t *n_hot,
                          enum pi_tune_prompt_stream mode, double copy_bps, double pack_bps)
{
    const struct pi_hparams *hp = &m->hp;
    memset(p, 0, sizeof *p);
    p->mode = mode;
    p->n_layer = hp->n_layer;
    p->copy_bps = copy_bps > 0 ? copy_bps : 0;
    p->pack_bps = pack_bps > 0 ? pack_bps : 0;
    p->first = -1;
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
        if (c > 0 && p->first < 0) p->first = il;
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

/* Layer il's packing into staging, ns (0 without a packing stage). */
static double pack_ns(const struct pi_stream_policy *p, int il)
{
    return p->pack_bps > 0 ? (double)p->bytes[il] / p->pack_bps * 1e9 : 0.0;
}

/* The stream side of the model before st_ratio: the first layer's pack, then each layer's slowest stage. */
static double stream_raw(const struct pi_stream_policy *p, int n)
{
    const double compute = p->flops_tok * (double)n / PI_STREAM_GPU_FLOPS * 1e9;
    double st = p->first >= 0 ? pack_ns(p, p->first) : 0.0;
    for (int il = 0; il < p->n_layer; il++) {
        if (!p->cold[il]) continue;
        const double copy = p->copy_bps > 0 ? (double)p->bytes[il] / p->copy_bps * 1e9 : 1e300;
        st += PI_MAX(PI_MAX(pack_ns(p, il), copy), compute);
    }
    return st;
}

void pi_stream_policy_model(const struct pi_stream_policy *p, int n, double *stream_ns, double *cpu_ns)
{
    const double st = stream_raw(p, n);
    *stream_ns = p->st_measured ? st * p->st_ratio : st;
    *cpu_ns = (double)p->n_cold * (double)n * p->cpu_ns_tok;
}

bool pi_stream_policy_decide(const struct pi_stream_policy *p, const int32_t *seq, const int32_t *pos, int n)
{
    if (!p->cold || p->n_cold == 0 || p->mode == PI_TUNE_PROMPT_STREAM_OFF || !pi_stream_policy_is_prompt(seq, pos, n))
        return false;
    if (p->mode == PI_TUNE_PROMPT_STREAM_ON) return true;
    if (p->copy_bps <= 0) return false; /* nothing to stream over */
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

void pi_stream_policy_note_stream(struct pi_stream_policy *p, int n, int64_t ns)
{
    if (!p->cold || p->copy_bps <= 0 || n < 1 || ns <= 0) return; /* no model to correct (mode on, no link) */
    const double raw = stream_raw(p, n);
    if (!(raw > 0)) return;
    const double v = (double)ns / raw;
    p->st_ratio = p->st_measured ? 0.5 * p->st_ratio + 0.5 * v : v;
    p->st_measured = true;
}
