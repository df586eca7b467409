/*
 * compute/backend.c - choosing a backend by name (compute/backend.h). The cuda backend is a module
 * loaded when it is first asked for (compute/backend-cuda-module.h), so a program that runs the host
 * backend never maps CUDA; where it was not built, or cannot be loaded, asking for it is a clear
 * error rather than a silent fall-back to the host.
 */
#include "config.h"
#include "compute/backend.h"
#include "compute/backend-cuda-module.h"
#include "compute/backend-cuda-plan.h"
#include "lib/common.h"
#include "lib/log.h"

#include <string.h>

int pi_backend_check(const char *name)
{
    if (strcmp(name, "host") == 0) return 0;
    if (strcmp(name, "cuda") == 0) return pi_backend_cuda_load() ? 0 : -PI_ERR_UNSUPPORTED; /* logged */
    pi_error("unknown backend '%s' (host or cuda)", name);
    return -PI_ERR_INVAL;
}

int pi_backend_new(const char *name, const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out)
{
    *out = NULL;
    int rc = pi_backend_check(name);
    if (rc != 0) return rc;
    if (strcmp(name, "host") == 0) return pi_backend_host_new(m, o, out);
    return pi_backend_cuda_load()->backend_new(m, o, out); /* loaded by pi_backend_check */
}

int pi_backend_device_bytes(const char *name, const pi_model_t *m, const struct pi_backend_opts *o, uint64_t *bytes)
{
    *bytes = 0;
#ifdef PI_HAVE_CUDA
    if (strcmp(name, "cuda") == 0) return pi_backend_cuda_plan(m, o, bytes);
#else
    (void)m, (void)o;
#endif
    (void)name;
    return -PI_ERR_UNSUPPORTED;
}

enum pi_backend_rows pi_backend_hot_rows(const char *name, const pi_model_t *m, const struct pi_placement *pl)
{
    int64_t n, lo = INT64_MAX, hi = 0; /* the fewest and the most hot neurons of a layer */
    for (int il = 0; il < pl->n_layer; il++) {
        pi_placement_hot(pl, il, &n);
        lo = PI_MIN(lo, n), hi = PI_MAX(hi, n);
    }
    if (hi <= 0) return PI_BACKEND_ROWS_NONE;
    /* host: a layer whose neurons are all hot is the single process's FFN step, on the model's rows */
    if (strcmp(name, "host") == 0) return hi >= m->hp.n_ff ? PI_BACKEND_ROWS_MODEL : PI_BACKEND_ROWS_PACKED;
#ifdef PI_HAVE_CUDA
    if (strcmp(name, "cuda") == 0 && pi_backend_cuda_all_dense(m, lo)) return PI_BACKEND_ROWS_NONE;
#else
    (void)lo;
#endif
    return PI_BACKEND_ROWS_PACKED;
}

void pi_backend_destroy(pi_backend_t **b)
{
    if (!b || !*b) return;
    (*b)->ops->destroy(*b);
    *b = NULL;
}
