/*
 * tests/test-placement.c - compute/placement.h with the cuda backend (built where the CUDA
 * backend is; needs no GPU: the backend's plan is host arithmetic). For budgets around the plan's
 * figures on the demo model and the tiny llama, the hot count is the largest whose plan fits: the
 * plan of k fits the budget and the plan of k + 1 does not (every neuron when the all-dense plan
 * fits, none when not even the weights every token needs fit). The plans are made here the way
 * pi-gpu-worker will make them.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "compute/placement.h"
#include "compute/backend-cuda.h"
#include "lib/common.h"
#include "model/model.h"
#include "tests/tap.h"

#define N_CTX 256
#define MAX_TOKENS 64

static const pi_model_t *M;
static int32_t *ids;
static const int32_t **hot;
static int64_t *nh;
static struct pi_layer *hl;

static uint64_t plan(int64_t k)
{
    uint64_t bytes = 0;
    for (int il = 0; il < M->hp.n_layer; il++) nh[il] = k;
    struct pi_backend_opts o = {.n_ctx = N_CTX, .n_seq = 1, .max_tokens = MAX_TOKENS, .hot = hot, .n_hot = nh,
                                .hot_layers = hl};
    PI_ASSERT(pi_backend_cuda_plan(M, &o, &bytes) == 0);
    return bytes;
}

static void check_model(const char *file)
{
    char path[1024], err[256];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true; /* as the coordinator opens it */
    pi_model_t *m = NULL;
    if (pi_model_open(tap_data(path, sizeof path, file), &mo, &m, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    M = m;
    const int64_t ff = m->hp.n_ff;
    ids = malloc((size_t)ff * sizeof *ids);
    hot = calloc((size_t)m->hp.n_layer, sizeof *hot);
    nh = calloc((size_t)m->hp.n_layer, sizeof *nh);
    hl = calloc((size_t)m->hp.n_layer, sizeof *hl);
    PI_ASSERT(ids && hot && nh && hl);
    for (int64_t i = 0; i < ff; i++) ids[i] = (int32_t)i;
    for (int il = 0; il < m->hp.n_layer; il++) {
        hot[il] = ids;
        hl[il] = m->layers[il];
        hl[il].ffn_down_t.type = pi_model_down_t_type(PI_TYPE_COUNT, m->layers[il].ffn_down.type, m->hp.n_embd);
    }
    const uint64_t p0 = plan(0), pmid = plan(ff / 3), plast = plan(ff - 1), pall = plan(ff);
    tap_ok(p0 < pmid && pmid < plast, "%s: the plan grows with the hot count (%llu, %llu, %llu bytes)", file,
           (unsigned long long)p0, (unsigned long long)pmid, (unsigned long long)plast);
    const uint64_t budgets[] = {p0 - 1, p0, p0 + 1, (p0 + pmid) / 2, pmid, pmid + 1, plast - 1, plast, pall, pall - 1,
                                (uint64_t)1 << 40};
    int bad = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(budgets); i++) {
        struct pi_config c;
        memset(&c, 0, sizeof c);
        c.gpu_backend = PI_GPU_CUDA;
        c.vram_budget = budgets[i];
        const int64_t k = pi_coord_choose_hot(&c, m, N_CTX, MAX_TOKENS);
        bool ok;
        if (k == ff) ok = pall <= budgets[i];
        else if (k == 0) ok = pall > budgets[i] && (p0 > budgets[i] || plan(1) > budgets[i]);
        else ok = pall > budgets[i] && plan(k) <= budgets[i] && (k + 1 == ff ? pall : plan(k + 1)) > budgets[i];
        if (!ok) bad++, tap_diag("%s: budget %llu: %lld hot neurons", file, (unsigned long long)budgets[i], (long long)k);
    }
    tap_ok(bad == 0, "%s: for %zu budgets around the plan, the hot count is the largest that fits (all-dense %llu bytes)",
           file, PI_ARRAY_LEN(budgets), (unsigned long long)pall);
    free(ids), free(hot), free(nh), free(hl);
    pi_model_destroy(&m);
}

int main(void)
{
    check_model("demo-relu-q4_0.gguf");
    check_model("tiny-llama-q4_0.gguf");
    return tap_done();
}
