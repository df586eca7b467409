/*
 * tests/unit/test-perplexity.c - pi-perplexity's statistics and base file (coordinator/perplexity.h),
 * against figures worked out by hand: log-softmax against a long-double reference, the perplexity and
 * its standard error for three known values, the KL divergence and Δp of a two-token case, the closing
 * statistics of identical runs, the base file's round trip and each refusal, and the model fingerprint
 * (the same for one file, different for one changed weight byte).
 */
#include "config.h"
#include "coordinator/perplexity.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "model/gguf.h"
#include "tests/tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_log_softmax(void)
{
    enum { N = 1000 };
    float logits[N], logp[N];
    uint64_t s = 12345;
    int want_top = 0;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        logits[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 60.0 - 30.0);
        if (logits[i] > logits[want_top]) want_top = i;
    }
    const int top = pi_log_softmax(logits, N, logp);
    long double z = 0;
    for (int i = 0; i < N; i++) z += expl((long double)logits[i]);
    double worst = 0, total = 0;
    for (int i = 0; i < N; i++) {
        worst = fmax(worst, fabs((double)((long double)logp[i] - ((long double)logits[i] - logl(z)))));
        total += exp((double)logp[i]);
    }
    tap_is_int(top, want_top, "log_softmax returns the argmax");
    tap_near(worst, 0.0, 1e-5, "log_softmax within 1e-5 of the long-double reference (logits over [-30, 30])");
    tap_near(total, 1.0, 1e-5, "its probabilities sum to 1");
    float tie[3] = {2.0f, 2.0f, 1.0f}, lt[3];
    tap_is_int(pi_log_softmax(tie, 3, lt), 0, "the first index on a tie");
}

static void test_ppl(void)
{
    struct pi_ppl_acc a = {0};
    double err;
    pi_ppl_acc_add(&a, 1.0);
    pi_ppl_acc_ppl(&a, &err);
    tap_ok(err < 0, "one value: no standard error");
    pi_ppl_acc_add(&a, 2.0);
    pi_ppl_acc_add(&a, 3.0);
    /* mean 2, var = 14/3 - 4 = 2/3, se = sqrt(var / 2) = sqrt(1/3) */
    const double ppl = pi_ppl_acc_ppl(&a, &err);
    tap_near(ppl, exp(2.0), 1e-12, "PPL = exp(mean nll)");
    tap_near(err, exp(2.0) * sqrt(1.0 / 3.0), 1e-12, "error = PPL * sqrt(var / (n - 1)), llama-perplexity's");
    struct pi_ppl_acc c = {0};
    for (int i = 0; i < 5; i++) pi_ppl_acc_add(&c, 0.5);
    pi_ppl_acc_ppl(&c, &err);
    tap_ok(err < 0, "no spread: no standard error");
}

static void test_kld(void)
{
    struct pi_kld_acc k;
    tap_ok(pi_kld_acc_init(&k, 400) == 0, "accumulator for 400 positions");
    /* base (0.5, 0.5), Q (0.9, 0.1), token 0: KL = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1), Δp = 0.4 */
    float base[2] = {logf(0.5f), logf(0.5f)}, q[2] = {logf(0.9f), logf(0.1f)};
    pi_kld_acc_add(&k, q, base, 2, 0, 0);
    tap_near(k.kld_values[0], 0.5 * log(0.5 / 0.9) + 0.5 * log(0.5 / 0.1), 1e-6, "KL of a two-token case");
    tap_near(k.p_diff_values[0], 0.4, 1e-6, "Δp = q(token) - p(token)");
    tap_is_int(k.n_same_top, 1, "same top token (the first of the base's tie)");
    pi_kld_acc_add(&k, q, base, 2, 1, 0);
    tap_near(k.p_diff_values[1], -0.4, 1e-6, "Δp of the other token");
    pi_kld_acc_free(&k);

    /* 300 positions of identical runs: every statistic is exactly 0 and the top token always agrees */
    tap_ok(pi_kld_acc_init(&k, 300) == 0, "accumulator for 300 positions");
    float lp[16], logits[16];
    for (int j = 0; j < 300; j++) {
        for (int i = 0; i < 16; i++) logits[i] = (float)((i * 7 + j * 3) % 11) * 0.5f;
        const int top = pi_log_softmax(logits, 16, lp);
        pi_kld_acc_add(&k, lp, lp, 16, j % 16, top);
    }
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    pi_kld_print_summary(m, &k);
    fclose(m);
    tap_ok(text && strstr(text, "Mean    KLD:   0.000000 \xc2\xb1   0.000000\n") != NULL, "identical runs: mean KLD 0");
    tap_ok(text && strstr(text, "Maximum KLD:   0.000000\n") != NULL, "identical runs: maximum KLD 0");
    tap_ok(text && strstr(text, "Same top p: 100.000 \xc2\xb1 0.000 %\n") != NULL, "identical runs: same top p 100%%");
    tap_ok(text && strstr(text, "Mean ln(PPL(Q)/PPL(base))     :   0.000000") != NULL, "identical runs: ln ratio 0");
    tap_ok(text && strstr(text, "99.9%   \xce\x94p:  0.000%\n") != NULL, "llama-perplexity's Δp percentile lines");
    free(text);
    pi_kld_acc_free(&k);

    tap_ok(pi_kld_acc_init(&k, 50) == 0, "accumulator for 50 positions");
    for (int j = 0; j < 50; j++) pi_kld_acc_add(&k, q, base, 2, 0, 0);
    text = NULL;
    m = open_memstream(&text, &len);
    pi_kld_print_summary(m, &k);
    fclose(m);
    tap_ok(text && strstr(text, "too few") && !strstr(text, "KLD:"), "fewer than 100 positions: no statistics");
    free(text);
    pi_kld_acc_free(&k);
}

/* A base file at path: header h, ids, then n_rows rows of n_vocab floats. */
static void write_base(const char *path, struct pi_kld_header *h, const int32_t *ids, int n_rows, int extra)
{
    FILE *f = fopen(path, "wb");
    if (!f || pi_kld_write_header(f, path, h, ids) != 0) tap_bail("cannot write %s", path);
    float row[8] = {0};
    for (int r = 0; r < n_rows; r++) fwrite(row, sizeof(float), h->n_vocab, f);
    for (int i = 0; i < extra; i++) fputc(0, f);
    fclose(f);
}

/* Read path's header against (n_vocab, bytes, hash); the return code. */
static int read_base(const char *path, int32_t n_vocab, uint64_t bytes, uint64_t hash, struct pi_kld_header *h)
{
    FILE *f = fopen(path, "rb");
    if (!f) tap_bail("cannot open %s", path);
    int32_t *ids = NULL;
    int rc = pi_kld_read_header(f, path, n_vocab, bytes, hash, h, &ids);
    fclose(f);
    free(ids);
    return rc;
}

static void test_base_file(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/base.kld", dir);
    int32_t ids[2 * 8];
    for (int i = 0; i < 16; i++) ids[i] = i % 8;
    struct pi_kld_header h = {.version = PI_KLD_VERSION,
                              .n_vocab = 8,
                              .n_ctx = 8,
                              .n_chunk = 2,
                              .n_scored = 3,
                              .model_bytes = 1234,
                              .model_hash = 0xabcdef};
    memcpy(h.magic, PI_KLD_MAGIC, 8);
    h.tokens_hash = pi_ppl_hash(PI_PPL_HASH_INIT, ids, sizeof ids);
    struct pi_kld_header g;
    write_base(path, &h, ids, 6, 0);
    tap_ok(read_base(path, 8, 1234, 0xabcdef, &g) == 0 && g.n_ctx == 8 && g.n_chunk == 2 && g.n_scored == 3,
           "base file round trip: 64 + 4 * 16 + 6 * 8 * 4 bytes");
    tap_ok(read_base(path, 9, 1234, 0xabcdef, &g) == -PI_ERR_INVAL, "another vocabulary size is refused");
    tap_ok(read_base(path, 8, 1235, 0xabcdef, &g) == -PI_ERR_INVAL, "another model size is refused");
    tap_ok(read_base(path, 8, 1234, 0xabcdee, &g) == -PI_ERR_INVAL, "another model fingerprint is refused");
    write_base(path, &h, ids, 5, 0);
    tap_ok(read_base(path, 8, 1234, 0xabcdef, &g) == -PI_ERR_INVAL, "a truncated file is refused");
    write_base(path, &h, ids, 6, 1);
    tap_ok(read_base(path, 8, 1234, 0xabcdef, &g) == -PI_ERR_INVAL, "a padded file is refused");
    ids[3] = 5;
    write_base(path, &h, ids, 6, 0);
    tap_ok(read_base(path, 8, 1234, 0xabcdef, &g) == -PI_ERR_INVAL, "ids that do not match their hash are refused");
    ids[3] = 3;
    h.n_scored = 4;
    write_base(path, &h, ids, 8, 0);
    tap_ok(read_base(path, 8, 1234, 0xabcdef, &g) == -PI_ERR_INVAL,
           "a header whose n_scored is not n_ctx - 1 - n_ctx/2");
    h.n_scored = 3, h.version = 2;
    write_base(path, &h, ids, 6, 0);
    tap_ok(read_base(path, 8, 1234, 0xabcdef, &g) == -PI_ERR_INVAL, "another version is refused");
}

/* A one-tensor GGUF whose byte i of the data is v. */
static uint64_t fingerprint_of(const char *path, int i, unsigned char v)
{
    unsigned char data[64 * 1024];
    for (size_t j = 0; j < sizeof data; j++) data[j] = (unsigned char)(j * 31);
    data[i] = v;
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    const uint64_t ne[1] = {sizeof data};
    if (!w || pi_gguf_writer_set_str(w, "general.architecture", "llama") != 0 ||
        pi_gguf_writer_add_tensor(w, "t", PI_TYPE_I8, 1, ne, data) != 0 || pi_gguf_writer_write(w, path) != 0)
        tap_bail("cannot write %s", path);
    pi_gguf_writer_destroy(&w);
    pi_gguf_t *g = NULL;
    char err[256];
    if (pi_gguf_open(path, &g, err, sizeof err) != 0) tap_bail("cannot open %s: %s", path, err);
    const uint64_t h = pi_ppl_model_fingerprint(g);
    pi_gguf_destroy(&g);
    return h;
}

static void test_fingerprint(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    const uint64_t a = fingerprint_of(path, 0, 1), b = fingerprint_of(path, 0, 1);
    const uint64_t c = fingerprint_of(path, 0, 2), d = fingerprint_of(path, 64 * 1024 - 1, 9);
    tap_ok(a == b, "the same file has the same fingerprint");
    tap_ok(a != c, "a changed first weight byte changes it");
    tap_ok(a != d, "a changed last weight byte changes it");
}

int main(void)
{
    pi_log_set_level(PI_LOG_ERROR);
    char dir[] = "/tmp/test-perplexity.XXXXXX";
    if (!mkdtemp(dir)) tap_bail("mkdtemp failed");
    test_log_softmax();
    test_ppl();
    test_kld();
    test_base_file(dir);
    test_fingerprint(dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) tap_diag("could not remove %s", dir);
    return tap_done();
}
