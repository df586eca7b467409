/*
 * tests/unit/test-gpu-loop-stream.c - prompt streaming in pi-gpu-worker's layer loop (gpu-worker/loop.c,
 * compute/stream-policy.h), in one process: the loop drives the host backend over the demo ReLU model at
 * hot fraction 0.5 (ids below n_ff / 2), and a thread stands in for the CPU worker on a real exchange
 * segment, counting the layers published to it and computing their cold neurons.
 *
 * With prompt_stream on, a prompt step publishes nothing and streams every layer (the loop's counters
 * say so), its logits the golden ones within the pipeline's tolerance; the decode step after it is
 * published layer by layer. Off, the same prompt is published once per layer and agrees with the
 * streamed logits within the two-path bound. Auto streams nothing over the host backend (no link), and
 * streams when a backend reports a link fast enough for the cost model; a backend that says it cannot
 * stream (stream_rates failing) is never asked to, even with on; nor is a loop that counts activation
 * thresholds (pi_stream_policy_mode), even with on over a fast link.
 */
#include "config.h"
#include "compute/backend.h"
#include "gpu-worker/loop.h"
#include "ipc/exchange.h"
#include "kernels/cpu/ops.h"
#include "lib/common.h"
#include "tests/test-pipeline-util.h"

#include <pthread.h>
#include <stdatomic.h>

#define MAX_TOK 64
#define GOLDEN_TOL 4e-2

static pi_model_t *model;
static int64_t half;

/* The stand-in CPU worker: the cold neurons [half, n_ff) of the model's own rows, every layer published. */
struct cw {
    pi_exchange_t *ex;
    atomic_bool stop, joined;
    atomic_int published;
    pi_ffn_work_t *w;
    int32_t *ids; /* (n_ff - half) the cold ids */
};

static void *cpu_worker(void *arg)
{
    struct cw *c = arg;
    uint32_t seen;
    const int64_t ff = model->hp.n_ff, d = model->hp.n_embd;
    if (pi_exchange_join(c->ex, 0, &seen) != 0) return NULL;
    atomic_store(&c->joined, true);
    float *out = pi_exchange_partial(c->ex, 0);
    while (!atomic_load(&c->stop)) {
        struct pi_exchange_step st;
        int rc = pi_exchange_wait_publish(c->ex, seen, 2000, INT64_C(50000000), &st);
        if (rc == -PI_ERR_TIMEOUT) continue;
        if (rc != 0) return NULL;
        seen = st.seq;
        atomic_fetch_add(&c->published, 1);
        memset(out, 0, (size_t)st.n_tokens * (size_t)d * sizeof *out);
        pi_ffn_neurons_batch(NULL, c->w, &model->layers[st.layer], model->hp.act, NULL, st.x, st.n_tokens, c->ids,
                             ff - half, out);
        pi_exchange_post_partial(c->ex, 0, st.seq);
    }
    return NULL;
}

static double fake_bps; /* the copy rate the fake reports; negative: the backend cannot stream */
static int fake_stream_rates(const pi_backend_t *b, double *copy_bps, double *pack_bps)
{
    (void)b;
    *copy_bps = fake_bps > 0 ? fake_bps : 0;
    *pack_bps = fake_bps > 0 ? fake_bps : 0;
    return fake_bps < 0 ? -PI_ERR_UNSUPPORTED : 0;
}
static bool gated_run; /* the loop counts activation thresholds (pi_gpu_loop_gated_init) */

/* One run of the loop in mode (-1: no pi_gpu_loop_stream_init at all), the backend's stream_rates replaced
 * by fake_stream_rates when fake, counting thresholds when gated_run: the prompt (n tokens, logits into lp), then one decode step. Publishes seen by the
 * worker for the prompt and the decode step, and the loop's counters of streamed layers and steps. */
struct result {
    int rc, pub_prompt, pub_decode;
    uint64_t layers, steps;
};

static struct result run(int mode, bool fake, const int32_t *tok, int n, float *lp, struct cw *c)
{
    struct result r = {0};
    const int nl = model->hp.n_layer;
    const int64_t ff = model->hp.n_ff;
    const int32_t **hot = calloc((size_t)nl, sizeof *hot);
    int64_t *n_hot = calloc((size_t)nl, sizeof *n_hot);
    int32_t *ids = malloc((size_t)ff * sizeof *ids);
    float *ld = malloc((size_t)model->hp.n_vocab * sizeof *ld);
    PI_ASSERT(hot && n_hot && ids && ld);
    for (int64_t j = 0; j < ff; j++) ids[j] = (int32_t)j;
    for (int il = 0; il < nl; il++) hot[il] = ids, n_hot[il] = half;
    struct pi_backend_opts bo = {.n_threads = 1,
                                 .n_ctx = MAX_TOK,
                                 .n_seq = 1,
                                 .max_tokens = MAX_TOK,
                                 .hot = hot,
                                 .n_hot = n_hot,
                                 .tune = {.prompt_stream = PI_TUNE_PROMPT_STREAM_ON}}; /* the host backend's buffers */
    struct pi_exchange_params xp = {.n_embd = (uint32_t)model->hp.n_embd,
                                    .max_tokens = MAX_TOK,
                                    .n_ff = (uint32_t)ff,
                                    .n_layers = (uint32_t)nl,
                                    .n_workers = 1};
    pi_backend_t *be = NULL;
    c->ex = pi_exchange_new(&xp);
    int rc = c->ex ? pi_backend_new("host", model, &bo, &be) : -1;
    struct pi_backend_ops ops;
    if (rc == 0 && fake) {
        ops = *be->ops;
        ops.stream_rates = fake_stream_rates;
        be->ops = &ops;
    }
    pthread_t th;
    atomic_store(&c->stop, false);
    atomic_store(&c->joined, false);
    atomic_store(&c->published, 0);
    if (rc == 0 && pthread_create(&th, NULL, cpu_worker, c) != 0) rc = -1;
    while (rc == 0 && !atomic_load(&c->joined)) usleep(1000);
    struct pi_gpu_loop g = {.be = be,
                            .ex = c->ex,
                            .n_seq = 1,
                            .ex_flags = PI_EXCHANGE_ALL | PI_EXCHANGE_GATE_SKIP,
                            .hot = hot,
                            .n_hot = n_hot};
    if (rc == 0 && gated_run) rc = pi_gpu_loop_gated_init(&g);
    if (rc == 0 && mode >= 0) rc = pi_gpu_loop_stream_init(&g, (enum pi_tune_prompt_stream)mode);
    int32_t seq[MAX_TOK], pos[MAX_TOK], rows[MAX_TOK];
    for (int i = 0; i < n; i++) seq[i] = 0, pos[i] = rows[i] = i;
    if (rc == 0) rc = pi_gpu_loop_eval(&g, tok, seq, pos, n, rows, n, lp);
    r.pub_prompt = atomic_load(&c->published);
    int32_t s0 = 0, p1 = n, r0 = 0;
    if (rc == 0) rc = pi_gpu_loop_eval(&g, tok, &s0, &p1, 1, &r0, 1, ld);
    r.pub_decode = atomic_load(&c->published) - r.pub_prompt;
    r.layers = g.stream.n_layers, r.steps = g.stream.n_steps;
    r.rc = rc;
    atomic_store(&c->stop, true);
    if (c->ex && be) pthread_join(th, NULL);
    pi_gpu_loop_free(&g);
    pi_gpu_loop_sparse_free(&g);
    pi_backend_destroy(&be);
    pi_exchange_destroy(&c->ex);
    free(hot), free(n_hot), free(ids), free(ld);
    return r;
}

int main(void)
{
    char path[512], gpath[512];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    if (pi_model_open(tap_data(path, sizeof path, "demo-relu-q4_0.gguf"), &mo, &model, NULL, 0) != 0) tap_bail("model");
    struct tp_golden gd;
    if (tp_golden_open(tap_data(gpath, sizeof gpath, "demo-relu-q4_0.golden.gguf"), &gd) != 0) tap_bail("golden");
    const int nl = model->hp.n_layer, n = gd.n, V = gd.n_vocab;
    PI_ASSERT(n + 1 <= MAX_TOK);
    half = model->hp.n_ff / 2;
    struct cw c = {.w = pi_ffn_work_new(model->hp.n_embd, 1), .ids = malloc((size_t)(model->hp.n_ff - half) * 4)};
    float *lon = malloc((size_t)n * V * 4), *loff = malloc((size_t)n * V * 4), *lx = malloc((size_t)n * V * 4);
    if (!c.w || !c.ids || !lon || !loff || !lx || pi_ffn_work_reserve(c.w, MAX_TOK) != 0) tap_bail("memory");
    for (int64_t j = half; j < model->hp.n_ff; j++) c.ids[j - half] = (int32_t)j;

    struct result r = run(PI_TUNE_PROMPT_STREAM_ON, false, gd.tokens, n, lon, &c);
    tap_ok(r.rc == 0 && r.pub_prompt == 0 && r.layers == (uint64_t)nl && r.steps == 1,
           "on: the prompt step published %d layers (want 0) and streamed %llu of %d in %llu step (rc %d)",
           r.pub_prompt, (unsigned long long)r.layers, nl, (unsigned long long)r.steps, r.rc);
    tap_ok(r.rc == 0 && r.pub_decode == nl, "on: the decode step after it is published layer by layer (%d of %d)",
           r.pub_decode, nl);
    double eg = tp_rel_err(lon, gd.logits, n, V);
    tap_ok(r.rc == 0 && eg <= GOLDEN_TOL, "on: the streamed prompt's logits vs golden %.3g (<= %.0e)", eg, GOLDEN_TOL);

    r = run(PI_TUNE_PROMPT_STREAM_OFF, false, gd.tokens, n, loff, &c);
    double eo = tp_rel_err(loff, lon, n, V);
    tap_ok(r.rc == 0 && r.pub_prompt == nl && r.pub_decode == nl && r.layers == 0 && eo <= 2 * GOLDEN_TOL,
           "off: %d layers published for the prompt, %d for the decode step; streamed vs not %.3g (<= %.0e)",
           r.pub_prompt, r.pub_decode, eo, 2 * GOLDEN_TOL);
    r = run(-1, false, gd.tokens, n, lx, &c);
    tap_ok(r.rc == 0 && r.pub_prompt == nl && memcmp(lx, loff, (size_t)n * V * 4) == 0,
           "without stream_init the loop never streams (the same bits as off)");
    r = run(PI_TUNE_PROMPT_STREAM_AUTO, false, gd.tokens, n, lx, &c);
    tap_ok(r.rc == 0 && r.pub_prompt == nl && r.layers == 0,
           "auto over the host backend (no link): nothing streamed (%d published)", r.pub_prompt);
    fake_bps = 1e15;
    r = run(PI_TUNE_PROMPT_STREAM_AUTO, true, gd.tokens, n, lx, &c);
    tap_ok(r.rc == 0 && r.pub_prompt == 0 && r.layers == (uint64_t)nl && r.pub_decode == nl &&
               memcmp(lx, lon, (size_t)n * V * 4) == 0,
           "auto over a link of 1 PB/s: the cost model streams the prompt (the same bits as on), not the decode step "
           "(rc %d, "
           "%d and %d published, %llu streamed)",
           r.rc, r.pub_prompt, r.pub_decode, (unsigned long long)r.layers);
    fake_bps = -1;
    r = run(PI_TUNE_PROMPT_STREAM_ON, true, gd.tokens, n, lx, &c);
    tap_ok(r.rc == 0 && r.pub_prompt == nl && r.layers == 0,
           "on, but the backend cannot stream (stream_rates fails): nothing streamed");
    fake_bps = 1e15;
    gated_run = true;
    r = run(PI_TUNE_PROMPT_STREAM_ON, true, gd.tokens, n, lx, &c);
    gated_run = false;
    tap_ok(r.rc == 0 && r.pub_prompt == nl && r.layers == 0 && r.steps == 0,
           "on over a link of 1 PB/s, but with activation thresholds: nothing streamed (%d published, %llu streamed)",
           r.pub_prompt, (unsigned long long)r.layers);

    free(lon), free(loff), free(lx), free(c.ids);
    pi_ffn_work_destroy(&c.w);
    pi_gguf_destroy(&gd.g);
    pi_model_destroy(&model);
    return tap_done();
}
