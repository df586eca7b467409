/*
 * tests/unit/test-stream-policy.c - the prompt-streaming decision (compute/stream-policy.h) through its
 * public header, over the demo model: which steps are prompt steps, which configurations may stream
 * (pi_stream_policy_mode), what off, on and auto decide, the cost model's two times against the formula
 * written out here, and the running measurements. Then a policy written by hand, whose decisions on
 * both sides of each crossover (rows, copy rate, packing rate, the products) are worked out in the
 * comments from the formula of doc/pipeline.md, not from the code.
 */
#include "config.h"
#include "compute/stream-policy.h"
#include "lib/common.h"
#include "lib/types.h"
#include "model/model.h"
#include "tests/tap.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t wbytes(const struct pi_weight *w)
{
    uint64_t rb = 0;
    PI_ASSERT(pi_type_row_bytes(w->type, (uint64_t)w->cols, &rb));
    return rb * (uint64_t)w->rows;
}

/* Rows 0..n-1 of one sequence: a prompt step of n rows. */
#define HAND_ROWS 1024
static int32_t hseq[HAND_ROWS], hpos[HAND_ROWS];

static bool streams(const struct pi_stream_policy *p, int n) { return pi_stream_policy_decide(p, hseq, hpos, n); }

/* Three layers, layer 0 all hot (not counted), layers 1 and 2 with cold neurons and 100 MB of FFN
 * weights each; 1e9 flops per token and layer (10 us per token at PI_STREAM_GPU_FLOPS = 1e14); the CPU
 * workers at cpu_us per token and layer. */
static bool hcold[3] = {false, true, true};
static uint64_t hbytes[3] = {100000000, 100000000, 100000000};
static void hand(struct pi_stream_policy *p, double copy_bps, double pack_bps, double cpu_us)
{
    memset(p, 0, sizeof *p);
    p->mode = PI_TUNE_PROMPT_STREAM_AUTO;
    p->n_layer = 3;
    p->cold = hcold;
    p->n_cold = 2;
    p->first = 1;
    p->bytes = hbytes;
    p->flops_tok = 1e9;
    p->copy_bps = copy_bps;
    p->pack_bps = pack_bps;
    p->cpu_ns_tok = cpu_us * 1e3;
}

static void check_hand(void)
{
    PI_ASSERT(PI_STREAM_GPU_FLOPS == 1e14); /* the arithmetic below takes it */
    for (int i = 0; i < HAND_ROWS; i++) hseq[i] = 0, hpos[i] = i;
    struct pi_stream_policy p;
    double st, cpu;

    /* Rows. Copy 25 GB/s: 4 ms a layer; packing 50 GB/s: 2 ms a layer; the products 10 us x n. Up to
     * 400 rows the copy is the slowest stage: stream = 2 ms (layer 1's pack) + 2 x 4 ms = 10 ms. The CPU:
     * 2 layers x n x 100 us = 0.2 n ms. Crossover at n = 50. */
    hand(&p, 25e9, 50e9, 100);
    pi_stream_policy_model(&p, 49, &st, &cpu);
    tap_ok(fabs(st - 10e6) <= 1, "hand: 49 rows: stream 10 ms (2 ms first pack + 2 x 4 ms copy): %.0f ns", st);
    tap_ok(fabs(cpu - 9.8e6) <= 1, "hand: 49 rows: CPU 2 x 49 x 100 us = 9.8 ms: %.0f ns", cpu);
    tap_ok(!streams(&p, 49) && streams(&p, 51),
           "hand: the row crossover: 49 rows stay on the CPU (9.8 < 10 ms), 51 stream (10.2 > 10 ms)");
    /* Packing and copy in series (the model before: 1 / (1/25 + 1/50) GB/s, 6 ms a layer, 12 ms) would
     * keep 55 rows (11 ms) on the CPU; overlapped, 10 ms, they stream. */
    tap_ok(streams(&p, 55), "hand: 55 rows (CPU 11 ms) stream: packing overlaps the copy (10 ms, not 12 ms in series)");

    /* The products. 1000 rows: 10 ms of products a layer, the slowest stage: stream = 2 + 2 x 10 =
     * 22 ms. CPU at 100 us: 200 ms, streams; at 10.5 us: 2 x 1000 x 10.5 us = 21 ms < 22 ms, stays (the
     * first pack tips it: without it 20 < 21 would stream); at 11.5 us: 23 ms > 22 ms, streams. */
    tap_ok(streams(&p, 1000), "hand: 1000 rows, CPU 200 ms, stream 22 ms: streams");
    hand(&p, 25e9, 50e9, 10.5);
    pi_stream_policy_model(&p, 1000, &st, &cpu);
    tap_ok(fabs(st - 22e6) <= 1, "hand: 1000 rows: stream 2 ms + 2 x 10 ms of products = 22 ms: %.0f ns", st);
    tap_ok(!streams(&p, 1000), "hand: 1000 rows, CPU at 10.5 us (21 ms): stays on the CPU");
    hand(&p, 25e9, 50e9, 11.5);
    tap_ok(streams(&p, 1000), "hand: 1000 rows, CPU at 11.5 us (23 ms): streams");

    /* The copy rate. 64 rows, CPU 2 x 64 x 100 us = 12.8 ms; stream = 2 + 2 x max(2, 100 MB / X): it
     * streams when 100 MB / X < 5.4 ms, X > 18.52 GB/s. 18 GB/s: 2 + 2 x 5.556 = 13.11 ms, CPU; 19 GB/s:
     * 2 + 2 x 5.263 = 12.53 ms, streams. */
    hand(&p, 18e9, 50e9, 100);
    tap_ok(!streams(&p, 64), "hand: 64 rows over 18 GB/s (13.11 ms vs 12.8 ms): CPU");
    hand(&p, 19e9, 50e9, 100);
    tap_ok(streams(&p, 64), "hand: 64 rows over 19 GB/s (12.53 ms vs 12.8 ms): streams");

    /* The packing rate. Packing at 10 GB/s: 10 ms a layer, the slowest stage: stream = 10 + 2 x 10 =
     * 30 ms; CPU 0.2 n ms: 149 rows (29.8 ms) CPU, 151 rows (30.2 ms) stream. */
    hand(&p, 25e9, 10e9, 100);
    pi_stream_policy_model(&p, 149, &st, &cpu);
    tap_ok(fabs(st - 30e6) <= 1, "hand: packing at 10 GB/s: stream 10 + 2 x 10 = 30 ms: %.0f ns", st);
    tap_ok(!streams(&p, 149) && streams(&p, 151), "hand: packing-bound crossover between 149 and 151 rows");

    /* The feedback. Rows at 64 stream over 25 GB/s (10 ms vs 12.8 ms). A streamed step measured at
     * 20 ms (twice the model) doubles the stream side: 20 ms > 12.8 ms, the next one stays on the CPU;
     * two more measured at 8 ms (0.8 x) bring the ratio to 0.5 (0.5 x 2 + 0.5 x 0.8 = 1.4, then 0.5 x
     * 1.4 + 0.5 x 0.8 = 1.1): 11 ms < 12.8 ms, it streams again. */
    hand(&p, 25e9, 50e9, 100);
    tap_ok(streams(&p, 64), "hand: 64 rows stream before any measurement (10 ms vs 12.8 ms)");
    pi_stream_policy_note_stream(&p, 64, 20000000);
    pi_stream_policy_model(&p, 64, &st, &cpu);
    tap_ok(p.st_measured && !streams(&p, 64), "hand: measured at 20 ms, the stream side is %.0f ns (want 20 ms): CPU",
           st);
    pi_stream_policy_note_stream(&p, 64, 8000000);
    pi_stream_policy_note_stream(&p, 64, 8000000);
    pi_stream_policy_model(&p, 64, &st, &cpu);
    tap_ok(fabs(st - 11e6) <= 1, "hand: then twice at 8 ms: the running ratio 1.1, stream 11 ms: %.0f ns", st);
    tap_ok(streams(&p, 64), "hand: 11 ms < 12.8 ms: streams again");
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

    tap_ok(pi_stream_policy_mode(PI_TUNE_PROMPT_STREAM_ON, false, false) == PI_TUNE_PROMPT_STREAM_ON &&
               pi_stream_policy_mode(PI_TUNE_PROMPT_STREAM_AUTO, false, false) == PI_TUNE_PROMPT_STREAM_AUTO &&
               pi_stream_policy_mode(PI_TUNE_PROMPT_STREAM_ON, true, false) == PI_TUNE_PROMPT_STREAM_OFF &&
               pi_stream_policy_mode(PI_TUNE_PROMPT_STREAM_AUTO, false, true) == PI_TUNE_PROMPT_STREAM_OFF &&
               pi_stream_policy_mode(PI_TUNE_PROMPT_STREAM_OFF, false, false) == PI_TUNE_PROMPT_STREAM_OFF,
           "mode: as asked, but off with predictors or with activation thresholds");

    int64_t *nh = calloc((size_t)L, sizeof *nh);
    PI_ASSERT(nh);
    for (int il = 0; il < L; il++) nh[il] = m->hp.n_ff / 2;
    nh[0] = m->hp.n_ff; /* layer 0 all hot: never streamed, not counted */
    struct pi_stream_policy p;
    int32_t sq[64] = {0}, ps[64];
    for (int i = 0; i < 64; i++) ps[i] = i;

    /* off and on */
    int rc = pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_OFF, 25e9, 0);
    tap_ok(rc == 0 && p.n_cold == L - 1, "init: %d layers with cold neurons of %d", p.n_cold, L);
    tap_ok(!pi_stream_policy_decide(&p, sq, ps, 64), "off: a prompt step does not stream");
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_ON, 0, 0);
    tap_ok(pi_stream_policy_decide(&p, sq, ps, 64) && pi_stream_policy_decide(&p, sq, ps, 2),
           "on: prompt steps stream, even without a measured link");
    tap_ok(!pi_stream_policy_decide(&p, sq, ps, 1) && !pi_stream_policy_decide(&p, dseq, dpos, 4),
           "on: decode steps never stream");
    pi_stream_policy_free(&p);
    for (int il = 0; il < L; il++) nh[il] = m->hp.n_ff;
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_ON, 25e9, 0);
    tap_ok(p.n_cold == 0 && !pi_stream_policy_decide(&p, sq, ps, 64), "on, every neuron hot: nothing to stream");
    pi_stream_policy_free(&p);
    for (int il = 0; il < L; il++) nh[il] = m->hp.n_ff / 2;
    nh[0] = m->hp.n_ff;

    /* auto: the model, written out: layer 1's pack, then each layer's slowest stage */
    double st, cpu;
    const double bps = 1e9, pbps = 2e9;
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, bps, pbps);
    tap_ok(p.first == 1, "the first layer with cold neurons is 1 (%d)", p.first);
    const double cpu_tok = 6.0 * d * (ff - (double)(m->hp.n_ff / 2)) / PI_STREAM_CPU_FLOPS * 1e9;
    tap_near(p.cpu_ns_tok, cpu_tok, 1e-9 * cpu_tok, "the CPU default: the cold neurons' flops at PI_STREAM_CPU_FLOPS");
    for (int n = 2; n <= 64; n *= 4) {
        double want_st = 0, want_cpu = 0;
        for (int il = 1; il < L; il++) {
            const struct pi_layer *Ly = &m->layers[il];
            const double b = (double)(wbytes(&Ly->ffn_gate) + wbytes(&Ly->ffn_up) + wbytes(&Ly->ffn_down));
            const double copy = b / bps * 1e9, pack = b / pbps * 1e9;
            const double comp = 6.0 * d * ff * n / PI_STREAM_GPU_FLOPS * 1e9;
            if (il == 1) want_st += pack;
            want_st += PI_MAX(PI_MAX(copy, pack), comp);
            want_cpu += n * cpu_tok;
        }
        pi_stream_policy_model(&p, n, &st, &cpu);
        tap_ok(st > 0 && cpu > 0 && fabs(st - want_st) <= 1e-9 * want_st && fabs(cpu - want_cpu) <= 1e-9 * want_cpu,
               "%d rows: stream %.0f ns (want %.0f), cpu %.0f ns (want %.0f)", n, st, want_st, cpu, want_cpu);
    }
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, 1e15, 0); /* a link that costs nothing */
    pi_stream_policy_model(&p, 64, &st, &cpu);
    tap_ok(st < cpu && pi_stream_policy_decide(&p, sq, ps, 64) && !pi_stream_policy_decide(&p, sq, ps, 1),
           "a link of 1 PB/s: the products alone are paid, a 64-row prompt step streams (%.0f < %.0f ns), decode not",
           st, cpu);
    pi_stream_policy_free(&p);
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, bps, 0);
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
    pi_stream_policy_init(&p, m, nh, PI_TUNE_PROMPT_STREAM_AUTO, 0, 0);
    p.cpu_ns_tok = 1e12;
    tap_ok(!pi_stream_policy_decide(&p, sq, ps, 64), "auto without a link (the host backend) never streams");
    pi_stream_policy_free(&p);
    pi_stream_policy_free(&p); /* twice is harmless */
    free(nh);
    pi_model_destroy(&m);
    check_hand();
    return tap_done();
}
