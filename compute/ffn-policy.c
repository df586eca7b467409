/*
 * compute/ffn-policy.c - dense or neuron by neuron (compute/ffn-policy.h).
 */
#include "compute/ffn-policy.h"
#include "lib/common.h"

int pi_ffn_policy_init(struct pi_ffn_policy *p, enum pi_ffn_act act, int n_layer, bool dense_ok, bool neurons_ok)
{
    *p = (struct pi_ffn_policy){.act = act, .dense_ok = dense_ok, .neurons_ok = neurons_ok, .n_layer = n_layer};
    if (n_layer < 1 || (!dense_ok && !neurons_ok)) return -PI_ERR_INVAL;
    return 0;
}

void pi_ffn_policy_free(struct pi_ffn_policy *p) { (void)p; }

enum pi_ffn_path pi_ffn_policy_choose(const struct pi_ffn_policy *p, int il, int64_t n_tokens)
{
    PI_ASSERT(il >= 0 && il < p->n_layer && n_tokens >= 1);
    return p->dense_ok ? PI_FFN_PATH_DENSE : PI_FFN_PATH_NEURONS;
}

void pi_ffn_policy_set_gate_min(struct pi_ffn_policy *p, bool on) { p->gate_min = on; }
