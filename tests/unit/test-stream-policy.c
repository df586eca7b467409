/*
 * tests/unit/test-stream-policy.c - the prompt-streaming decision (compute/stream-policy.h) through its
 * public header, over the demo model: which steps are prompt steps, what off, on and auto decide, the
 * cost model's two times against the formula written out here, and the running measurement.
 */
#include "config.h"
#include "compute/stream-policy.h"
#include "lib/common.h"
#include "lib/types.h"
#include "model/model.h"
#include "tests/tap.h"

#include <stdlib.h>
#include <string.h>

static uint64_t wbytes(const struct pi_weight *w)
{
    uint64_t rb = 0;
    PI_ASSERT(pi_type_row_bytes(w->type, (uint64_t)w->cols, &rb));
    return rb * (uint64_t)w->rows;
}

int main(void)
{
    char path[1024], err[256];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    pi_model_t *m = NULL;
    if (pi_model_open(tap_data(path, sizeof path, "demo-relu-q4_0.gguf"), &mo, &m, err, sizeof err) != 0)
        tap_bail("%s", err);
    const int L = m->hp.n_layer;
    const double d = m->hp.n_embd, ff = m->hp.n_ff;

    /* prompt steps: some row continues the one before it in its sequence */
    int32_t seq[8] = {0, 0, 0, 0}, pos[8] = {5, 6, 7, 8};
    tap_ok(pi_stream_policy_is_prompt(seq, pos, 4), "four positions of one sequence are a prompt step");
    tap_ok(!pi_stream_policy_is_prompt(seq, pos, 1), "one row is a decode step");
    int32_t dseq[4] = {0, 1, 2, 3}, dpos[4] = {9, 3, 4, 0};
    tap_ok(!pi_stream_policy_is_prompt(dseq, dpos, 4), "one row of each of four sequences is a decode step");
    int32_t mseq[4] = {0, 1, 1, 2}, mpos[4] = {9, 0, 1, 4};
    tap_ok(pi_stream_policy_is_prompt(mseq, mpos, 4),
           "a decode row beside a prompt chunk of two rows is a prompt step");
    int32_t gseq[3] = {0, 0, 0}, gpos[3] = {1, 4, 9};
    tap_ok(!pi_stream_policy_is_prompt(gseq, gpos, 3),
           "rows of one sequence at positions that do not follow are no run");

    int64_t *nh = calloc((size_t)L, sizeof *nh);
    PI_ASSERT(nh);
    for (int il = 0; il < L; il++) nh[il] = m->hp.n_ff / 2;
    nh[0] = m->hp.n_ff; /* layer 0 all hot: never streamed, not counted */
    struct pi_stream_policy p;
    int32_t sq[64] = {0}, ps[64];
    for (int i = 0; i < 64; i++) ps[i] = i;

    /* off and on */
    int rc = pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_OFF, 25e9);
    tap_ok(rc == 0 && p.n_cold == L - 1, "init: %d layers with cold neurons of %d", p.n_cold, L);
    tap_ok(!pi_stream_policy_decide(&p, sq, ps, 64), "off: a prompt step does not stream");
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_ON, 0);
    tap_ok(pi_stream_policy_decide(&p, sq, ps, 64) && pi_stream_policy_decide(&p, sq, ps, 2),
           "on: prompt steps stream, even without a measured link");
    tap_ok(!pi_stream_policy_decide(&p, sq, ps, 1) && !pi_stream_policy_decide(&p, dseq, dpos, 4),
           "on: decode steps never stream");
    pi_stream_policy_free(&p);
    for (int il = 0; il < L; il++) nh[il] = m->hp.n_ff;
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_ON, 25e9);
    tap_ok(p.n_cold == 0 && !pi_stream_policy_decide(&p, sq, ps, 64), "on, every neuron hot: nothing to stream");
    pi_stream_policy_free(&p);
    for (int il = 0; il < L; il++) nh[il] = m->hp.n_ff / 2;
    nh[0] = m->hp.n_ff;

    /* auto: the model, written out */
    double st, cpu;
    const double bps = 1e9;
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, bps);
    const double cpu_tok = 6.0 * d * (ff - (double)(m->hp.n_ff / 2)) / PI_STREAM_CPU_FLOPS * 1e9;
    tap_near(p.cpu_ns_tok, cpu_tok, 1e-9 * cpu_tok, "the CPU default: the cold neurons' flops at PI_STREAM_CPU_FLOPS");
    for (int n = 2; n <= 64; n *= 4) {
        double want_st = 0, want_cpu = 0;
        for (int il = 1; il < L; il++) {
            const struct pi_layer *Ly = &m->layers[il];
            const double copy =
                (double)(wbytes(&Ly->ffn_gate) + wbytes(&Ly->ffn_up) + wbytes(&Ly->ffn_down)) / bps * 1e9;
            const double comp = 6.0 * d * ff * n / PI_STREAM_GPU_FLOPS * 1e9;
            want_st += copy > comp ? copy : comp;
            want_cpu += n * cpu_tok;
        }
        pi_stream_policy_model(&p, n, &st, &cpu);
        tap_ok(st > 0 && cpu > 0 && st == want_st && cpu == want_cpu,
               "%d rows: stream %.0f ns (want %.0f), cpu %.0f ns (want %.0f)", n, st, want_st, cpu, want_cpu);
        tap_ok(pi_stream_policy_decide(&p, sq, ps, n) == (st < cpu), "%d rows: auto streams iff stream < cpu (%s)", n,
               st < cpu ? "streams" : "CPU");
    }
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, 1e15); /* a link that costs nothing */
    pi_stream_policy_model(&p, 64, &st, &cpu);
    tap_ok(st < cpu && pi_stream_policy_decide(&p, sq, ps, 64) && !pi_stream_policy_decide(&p, sq, ps, 1),
           "a link of 1 PB/s: the products alone are paid, a 64-row prompt step streams (%.0f < %.0f ns), decode not",
           st, cpu);
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, bps);
    /* a measurement: too few rows is ignored; then a slow CPU makes a large step stream, a fast one not */
    pi_stream_policy_note(&p, PI_STREAM_MEASURE_ROWS - 1, 1000000000);
    tap_ok(!p.measured && p.cpu_ns_tok == cpu_tok, "a layer of fewer than %d rows is no measurement",
           PI_STREAM_MEASURE_ROWS);
    pi_stream_policy_model(&p, 64, &st, &cpu);
    const double slow = st / (L - 1) / 64 * 4, fast = st / (L - 1) / 64 / 4; /* ns per token and layer */
    pi_stream_policy_note(&p, 64, (int64_t)(slow * 64));
    tap_ok(p.measured && p.cpu_ns_tok > 0.99 * slow && p.cpu_ns_tok < 1.01 * slow &&
               pi_stream_policy_decide(&p, sq, ps, 64),
           "a CPU measured at 4x the stream's time per token streams (%.0f ns per token and layer)", p.cpu_ns_tok);
    for (int k = 0; k < 20; k++) pi_stream_policy_note(&p, 64, (int64_t)(fast * 64));
    tap_ok(p.cpu_ns_tok < 1.01 * fast && !pi_stream_policy_decide(&p, sq, ps, 64),
           "measured at a quarter of it, the running mean follows and the step stays on the CPU (%.0f ns)",
           p.cpu_ns_tok);
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, 0);
    p.cpu_ns_tok = 1e12;
    tap_ok(!pi_stream_policy_decide(&p, sq, ps, 64), "auto without a link (the host backend) never streams");
    pi_stream_policy_free(&p);
    pi_stream_policy_free(&p); /* twice is harmless */
    free(nh);
    pi_model_destroy(&m);
    return tap_done();
}
