/*
 * lib/weights.c - the FFN activation's names (lib/weights.h).
 */
#include "lib/weights.h"
#include "lib/common.h"

#include <strings.h>

const char *pi_ffn_act_name(enum pi_ffn_act a)
{
    switch (a) {
    case PI_FFN_ACT_SILU: return "silu";
    case PI_FFN_ACT_RELU: return "relu";
    case PI_FFN_ACT_DRELU: return "drelu";
    default: return "default";
    }
}

int pi_ffn_act_parse(const char *s, enum pi_ffn_act *out)
{
    static const enum pi_ffn_act acts[] = {PI_FFN_ACT_SILU, PI_FFN_ACT_RELU, PI_FFN_ACT_DRELU};
    for (size_t i = 0; s && i < PI_ARRAY_LEN(acts); i++) {
        if (strcasecmp(s, pi_ffn_act_name(acts[i])) == 0) {
            *out = acts[i];
            return 0;
        }
    }
    return -PI_ERR_INVAL;
}
