/*
 * compute/ffn-policy.c - dense or neuron by neuron (compute/ffn-policy.h).
 */
#include "compute/ffn-policy.h"
#include "lib/common.h"

#include <stdlib.h>

int pi_ffn_policy_init(struct pi_ffn_policy *p, enum pi_ffn_act act, int n_layer, bool dense_ok, bool neurons_ok)
{
    *p = (struct pi_ffn_policy){.act = act, .dense_ok = dense_ok, .neurons_ok = neurons_ok, .n_layer = n_layer};
    if (n_layer < 1 || (!dense_ok && !neurons_ok)) return -PI_ERR_INVAL;
    if (!(p->recent = malloc((size_t)n_layer * sizeof *p->recent))) return -PI_ERR_NOMEM;
    pi_ffn_policy_reset(p, -1);
    return 0;
}

void pi_ffn_policy_free(struct pi_ffn_policy *p)
{
    free(p->recent);
    p->recent = NULL;
}

void pi_ffn_policy_reset(struct pi_ffn_policy *p, int il)
{
    for (int i = 0; i < p->n_layer; i++)
        if (il < 0 || i == il) p->recent[i] = -1.0f;
}

enum pi_ffn_path pi_ffn_policy_choose(const struct pi_ffn_policy *p, int il, int64_t n_tokens)
{
    PI_ASSERT(il >= 0 && il < p->n_layer);
    if (!p->neurons_ok) return PI_FFN_PATH_DENSE;
    if (!p->dense_ok) return PI_FFN_PATH_NEURONS;
    if (n_tokens > 1) return PI_FFN_PATH_DENSE;
    if (p->gate_min) return p->recent[il] >= PI_FFN_GATE_DENSE_MIN_ACTIVE ? PI_FFN_PATH_DENSE : PI_FFN_PATH_NEURONS;
    if (p->act == PI_FFN_ACT_SILU || p->recent[il] >= PI_FFN_DENSE_MIN_ACTIVE) return PI_FFN_PATH_DENSE;
    return PI_FFN_PATH_NEURONS;
}

void pi_ffn_policy_set_gate_min(struct pi_ffn_policy *p, bool on) { p->gate_min = on; }

void pi_ffn_policy_observe(struct pi_ffn_policy *p, int il, int64_t active, int64_t total)
{
    PI_ASSERT(il >= 0 && il < p->n_layer);
    if (total <= 0) return;
    const float frac = (float)active / (float)total, r = p->recent[il];
    p->recent[il] = r < 0.0f ? frac : 0.9f * r + 0.1f * frac;
}
