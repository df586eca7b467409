/*
 * gpu-worker/backend.c - choosing a backend by name (gpu-worker/backend.h). The cuda backend is
 * linked in only when it was built (PI_HAVE_CUDA_BACKEND); without it, asking for it is a clear
 * error rather than a silent fall-back to the host.
 */
#include "config.h"
#include "gpu-worker/backend.h"
#include "lib/common.h"
#include "lib/log.h"

#include <string.h>

int pi_backend_new(const char *name, const pi_model_t *m, const struct pi_backend_opts *o, pi_backend_t **out)
{
    *out = NULL;
    if (strcmp(name, "host") == 0) return pi_backend_host_new(m, o, out);
    if (strcmp(name, "cuda") == 0) {
#ifdef PI_HAVE_CUDA_BACKEND
        return pi_backend_cuda_new(m, o, out);
#else
        pi_error("backend cuda: this pi-gpu-worker was built without the CUDA backend "
                 "(configure --with-cuda, with the CUDA backend of issue 7); use --backend host");
        return -PI_ERR_UNSUPPORTED;
#endif
    }
    pi_error("unknown backend '%s' (host or cuda)", name);
    return -PI_ERR_INVAL;
}

void pi_backend_destroy(pi_backend_t **b)
{
    if (!b || !*b) return;
    (*b)->ops->destroy(*b);
    *b = NULL;
}
