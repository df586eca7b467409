/*
 * tests/unit/test-placement.c - compute/placement.h, the hot count of a pipeline. In every build:
 * without a VRAM budget the count is round(hot_fraction * n_ff); with a budget and the host backend
 * (and the cuda backend in a build without it) it is the weights-only rule, the largest k for which
 * the weights every token needs plus k neurons' gate, up and down rows fit (checked against those
 * sizes summed here from the model). Where the CUDA backend is built (it needs no GPU: the backend's
 * plan is host arithmetic): for budgets around the plan's figures on the demo model and the tiny
 * llama, the hot count is the largest whose plan fits: the plan of k fits the budget and the plan of
 * k + 1 does not (every neuron when the all-dense plan fits, none when not even the weights every
 * token needs fit). The plans are made here the way pi-gpu-worker will make them.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/placement.h"
#ifdef PI_HAVE_CUDA
#include "compute/backend-cuda.h"
#endif
#include "lib/common.h"
#include "lib/types.h"
#include "model/model.h"
#include "tests/tap.h"

#define N_CTX 256
#define MAX_TOKENS 64

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static pi_model_t *open_model(const char *file)
{
    char path[1024], err[256];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true; /* as the coordinator opens it */
    pi_model_t *m = NULL;
    if (pi_model_open(tap_data(path, sizeof path, file), &mo, &m, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    return m;
}

static int64_t choose(const pi_model_t *m, enum pi_gpu_backend be, double frac, uint64_t budget)
{
    struct pi_config c;
    memset(&c, 0, sizeof c);
    c.gpu_backend = be;
    c.hot_fraction = frac;
    c.vram_budget = budget;
    return pi_coord_choose_hot(&c, m, N_CTX, MAX_TOKENS);
}

static uint64_t weight_bytes(const struct pi_weight *w) { return (uint64_t)w->row_bytes * (uint64_t)w->rows; }

/* The rules that hold in every build. */
static void check_rules(const char *file)
{
    pi_model_t *m = open_model(file);
    const int64_t ff = m->hp.n_ff;
    int bad = 0;
    for (int i = 0; i < 40; i++) {
        const double f = i == 0 ? 0.0 : i == 1 ? 1.0 : (double)(rnd() % 100001) / 100000.0;
        const int64_t k = choose(m, i % 2 ? PI_GPU_HOST : PI_GPU_CUDA, f, 0);
        if (k != (int64_t)llround(f * (double)ff))
            bad++, tap_diag("%s: hot fraction %.5f: %lld hot", file, f, (long long)k);
    }
    tap_ok(bad == 0, "%s: without a budget, 40 hot fractions give round(fraction x %lld)", file, (long long)ff);

    /* the weights every token needs, and one neuron's gate, up and down rows over all layers */
    uint64_t fixed = weight_bytes(&m->token_embd) + (m->tied ? 0 : weight_bytes(&m->output)), per = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct pi_layer *L = &m->layers[il];
        fixed += weight_bytes(&L->attn_q) + weight_bytes(&L->attn_k) + weight_bytes(&L->attn_v) +
                 weight_bytes(&L->attn_output);
        uint64_t down = 0;
        PI_ASSERT(pi_type_row_bytes(L->ffn_down.type, (uint64_t)m->hp.n_embd, &down));
        per += L->ffn_gate.row_bytes + L->ffn_up.row_bytes + down;
    }
#ifdef PI_HAVE_CUDA
    const enum pi_gpu_backend bes[] = {PI_GPU_HOST};
#else
    const enum pi_gpu_backend bes[] = {PI_GPU_HOST, PI_GPU_CUDA}; /* without the backend: the same rule */
#endif
    for (size_t b = 0; b < PI_ARRAY_LEN(bes); b++) {
        bad = 0;
        const char *name = bes[b] == PI_GPU_HOST ? "host" : "cuda (not built)";
        const uint64_t all = fixed + per * (uint64_t)ff; /* (budget, hot count) at the rule's edges: */
        const uint64_t edge[][2] = {{1, 0},          {fixed, 0},          {fixed + per - 1, 0},
                                    {fixed + per, 1}, {all, (uint64_t)ff}, {all - 1, (uint64_t)ff - 1},
                                    {UINT64_MAX / 2, (uint64_t)ff}};
        for (size_t i = 0; i < PI_ARRAY_LEN(edge); i++) {
            const int64_t k = choose(m, bes[b], 0.5, edge[i][0]);
            if (k != (int64_t)edge[i][1])
                bad++, tap_diag("%s: budget %llu: %lld hot, want %llu", file, (unsigned long long)edge[i][0],
                                (long long)k, (unsigned long long)edge[i][1]);
        }
        for (int i = 0; i < 50; i++) {
            const uint64_t j = rnd() % (uint64_t)ff, budget = fixed + per * j + rnd() % per;
            const int64_t k = choose(m, bes[b], 0.5, budget);
            if (k != (int64_t)j)
                bad++, tap_diag("%s: budget %llu: %lld hot, want %llu", file, (unsigned long long)budget,
                                (long long)k, (unsigned long long)j);
        }
        tap_ok(bad == 0, "%s, %s backend: for 57 budgets the hot count is the largest k with %llu + k x %llu bytes "
                         "inside the budget", file, name, (unsigned long long)fixed, (unsigned long long)per);
    }
    pi_model_destroy(&m);
}

#ifdef PI_HAVE_CUDA
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

#endif

int main(int argc, char **argv)
{
    const uint64_t seed =
        argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    rng_state = seed | 1;
    tap_diag("seed %llu (replay: test-placement %llu)", (unsigned long long)seed, (unsigned long long)seed);
    check_rules("demo-relu-q4_0.gguf");
    check_rules("tiny-llama-q4_0.gguf");
#ifdef PI_HAVE_CUDA
    check_model("demo-relu-q4_0.gguf");
    check_model("tiny-llama-q4_0.gguf");
#endif
    return tap_done();
}
