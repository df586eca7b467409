/*
 * coordinator/perplexity-stats.c - pi-perplexity's statistics and base file (coordinator/perplexity.h).
 *
 * The statistics are llama-perplexity's, so that a figure printed here means what the same line
 * means in llama.cpp's output: a mean with the standard error of the mean, sqrt(var / (n - 1)),
 * carried through exp() by its derivative (d exp(x) = exp(x) dx), and differences of correlated
 * means with their covariance. The code is pinfer's; only the formulas and the line formats follow
 * llama.cpp (doc/perplexity.md gives each formula).
 */
#include "config.h"
#include "coordinator/perplexity.h"
#include "lib/common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void pi_ppl_acc_add(struct pi_ppl_acc *a, double nll)
{
    a->sum_nll += nll;
    a->sum_nll2 += nll * nll;
    a->count++;
}

double pi_ppl_acc_ppl(const struct pi_ppl_acc *a, double *err)
{
    *err = -1.0;
    if (a->count < 1) return 0.0;
    const double mean = a->sum_nll / (double)a->count;
    const double ppl = exp(mean);
    const double var = a->sum_nll2 / (double)a->count - mean * mean;
    if (a->count >= 2 && var > 0) *err = ppl * sqrt(var / (double)(a->count - 1));
    return ppl;
}

/* ---- KL divergence ---- */

int pi_kld_acc_init(struct pi_kld_acc *k, int64_t cap)
{
    memset(k, 0, sizeof *k);
    PI_ASSERT(cap >= 0);
    k->kld_values = malloc(sizeof(float) * (size_t)(cap ? cap : 1));
    k->p_diff_values = malloc(sizeof(float) * (size_t)(cap ? cap : 1));
    if (!k->kld_values || !k->p_diff_values) {
        pi_kld_acc_free(k);
        return -PI_ERR_NOMEM;
    }
    k->cap = cap;
    return 0;
}

void pi_kld_acc_free(struct pi_kld_acc *k)
{
    free(k->kld_values);
    free(k->p_diff_values);
    memset(k, 0, sizeof *k);
}

void pi_kld_acc_add(struct pi_kld_acc *k, const float *logp, const float *base, int n_vocab, int32_t tok, int top_q)
{
    PI_ASSERT(k->count < k->cap && tok >= 0 && tok < n_vocab);
    const double nll = -(double)logp[tok], nll_base = -(double)base[tok];
    k->sum_nll += nll;
    k->sum_nll2 += nll * nll;
    k->sum_nll_base += nll_base;
    k->sum_nll_base2 += nll_base * nll_base;
    k->sum_nll_nll_base += nll * nll_base;
    /* KL(base || Q) = sum_i p_base(i) (log p_base(i) - log q(i)), over the whole vocabulary (the
     * base file keeps every log-probability in float32, so no tail is cut off as llama.cpp's 16-bit
     * file must) */
    int top_base;
    const double kl = pi_kl_logp(base, logp, n_vocab, &top_base);
    k->sum_kld += kl;
    k->sum_kld2 += kl * kl;
    k->n_same_top += top_base == top_q;
    const double p_diff = exp(-nll) - exp(-nll_base);
    k->sum_p_diff += p_diff;
    k->sum_p_diff2 += p_diff * p_diff;
    k->sum_p_diff4 += p_diff * p_diff * p_diff * p_diff;
    k->kld_values[k->count] = (float)kl;
    k->p_diff_values[k->count] = (float)p_diff;
    k->count++;
}

/* Mean of n values from their sum and sum of squares, and its standard error (0 for fewer than 11
 * values or no spread, as llama-perplexity). */
static double mean_err(double sum, double sum2, int64_t n, double *err)
{
    *err = 0.0;
    if (n < 1) return 0.0;
    const double m = sum / (double)n, var = sum2 / (double)n - m * m;
    if (var > 0 && n > 10) *err = sqrt(var / (double)(n - 1));
    return m;
}

/* Covariance of the two means (0 for fewer than 10 values). */
static double mean_cov(double sa, double sb, double sab, int64_t n)
{
    if (n < 10) return 0.0;
    return (sab / (double)n - (sa / (double)n) * (sb / (double)n)) / (double)(n - 1);
}

void pi_kld_print_chunk_header(FILE *out)
{
    fprintf(out, "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
                 "\xce\x94p RMS            Same top p\n");
}

void pi_kld_print_chunk(FILE *out, const struct pi_kld_acc *k, int chunk)
{
    double e_q, e_b, e_kl, e_mse;
    const double lq = mean_err(k->sum_nll, k->sum_nll2, k->count, &e_q);
    const double lb = mean_err(k->sum_nll_base, k->sum_nll_base2, k->count, &e_b);
    const double cov = mean_cov(k->sum_nll, k->sum_nll_base, k->sum_nll_nll_base, k->count);
    const double kl = mean_err(k->sum_kld, k->sum_kld2, k->count, &e_kl);
    const double mse = mean_err(k->sum_p_diff2, k->sum_p_diff4, k->count, &e_mse);
    const double rms = sqrt(mse), e_rms = rms > 0 ? 0.5 / rms * e_mse : 0.0;
    const double top = k->count ? (double)k->n_same_top / (double)k->count : 0.0;
    const double e_top = k->count > 1 ? sqrt(top * (1 - top) / (double)(k->count - 1)) : 0.0;
    fprintf(out,
            "%4d    %9.4f \xc2\xb1 %9.4f    %10.5f \xc2\xb1 %10.5f    %10.5f \xc2\xb1 %10.5f    %6.3f \xc2\xb1 %6.3f %%"
            "    %6.3f \xc2\xb1 %6.3f %%\n",
            chunk, exp(lq), exp(lq) * e_q, lq - lb, sqrt(fmax(0.0, e_q * e_q + e_b * e_b - 2 * cov)), kl, e_kl,
            100 * rms, 100 * e_rms, 100 * top, 100 * e_top);
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The fraction-th value of sorted v (n), interpolated between neighbours as llama-perplexity does. */
static double percentile(const float *v, int64_t n, double fraction)
{
    if (fraction <= 0) return v[0];
    if (fraction >= 1) return v[n - 1];
    const double p = fraction * (double)(n - 1);
    const int64_t i = (int64_t)p;
    const double w = p - (double)i;
    return (1 - w) * v[i] + w * v[PI_MIN(i + 1, n - 1)];
}

static double median(const float *v, int64_t n)
{
    return n % 2 == 0 ? 0.5 * ((double)v[n / 2] + (double)v[n / 2 - 1]) : (double)v[n / 2];
}

void pi_kld_print_summary(FILE *out, struct pi_kld_acc *k)
{
    const int64_t n = k->count;
    if (n < 100) {
        fprintf(out, "(%lld scored positions: too few for the statistics, which need 100)\n", (long long)n);
        return;
    }
    qsort(k->kld_values, (size_t)n, sizeof(float), cmp_float);
    qsort(k->p_diff_values, (size_t)n, sizeof(float), cmp_float);
    double e_q, e_b;
    const double lq = mean_err(k->sum_nll, k->sum_nll2, n, &e_q);
    const double lb = mean_err(k->sum_nll_base, k->sum_nll_base2, n, &e_b);
    const double cov = mean_cov(k->sum_nll, k->sum_nll_base, k->sum_nll_nll_base, n);
    const double pq = exp(lq), pb = exp(lb), e_pq = pq * e_q, e_pb = pb * e_b;
    const double e_ratio = sqrt(fmax(0.0, e_q * e_q + e_b * e_b - 2 * cov));
    fprintf(out, "====== Perplexity statistics ======\n");
    fprintf(out, "Mean PPL(Q)                   : %10.6f \xc2\xb1 %10.6f\n", pq, e_pq);
    fprintf(out, "Mean PPL(base)                : %10.6f \xc2\xb1 %10.6f\n", pb, e_pb);
    /* the correlation is 100% for identical runs; 0/0 when either has no spread is printed as 100 */
    const double den = e_q * e_b;
    fprintf(out, "Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", den > 0 ? 100.0 * cov / den : 100.0);
    fprintf(out, "Mean ln(PPL(Q)/PPL(base))     : %10.6f \xc2\xb1 %10.6f\n", lq - lb, e_ratio);
    fprintf(out, "Mean PPL(Q)/PPL(base)         : %10.6f \xc2\xb1 %10.6f\n", exp(lq - lb), exp(lq - lb) * e_ratio);
    fprintf(out, "Mean PPL(Q)-PPL(base)         : %10.6f \xc2\xb1 %10.6f\n", pq - pb,
            sqrt(fmax(0.0, e_pq * e_pq + e_pb * e_pb - 2.0 * pq * pb * cov)));
    fprintf(out, "\n====== KL divergence statistics ======\n");
    double e_kl;
    const double kl = mean_err(k->sum_kld, k->sum_kld2, n, &e_kl);
    const float *kv = k->kld_values, *pv = k->p_diff_values;
    fprintf(out, "Mean    KLD: %10.6f \xc2\xb1 %10.6f\n", kl, e_kl);
    fprintf(out, "Maximum KLD: %10.6f\n", (double)kv[n - 1]);
    static const struct {
        const char *label;
        double f;
    } kq[] = {
        {"99.9%   KLD", 0.999}, {"99.0%   KLD", 0.990}, {"95.0%   KLD", 0.950}, {"90.0%   KLD", 0.900}, {NULL, 0.5},
        {"10.0%   KLD", 0.100}, {" 5.0%   KLD", 0.050}, {" 1.0%   KLD", 0.010}, {" 0.1%   KLD", 0.001},
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(kq); i++) {
        if (!kq[i].label) fprintf(out, "Median  KLD: %10.6f\n", median(kv, n));
        else fprintf(out, "%s: %10.6f\n", kq[i].label, percentile(kv, n, kq[i].f));
    }
    fprintf(out, "Minimum KLD: %10.6f\n", (double)kv[0]);
    fprintf(out, "\n====== Token probability statistics ======\n");
    double e_pd;
    const double pd = mean_err(k->sum_p_diff, k->sum_p_diff2, n, &e_pd);
    fprintf(out, "Mean    \xce\x94p: %6.3f \xc2\xb1 %5.3f %%\n", 100 * pd, 100 * e_pd);
    fprintf(out, "Maximum \xce\x94p: %6.3f%%\n", 100.0 * pv[n - 1]);
    static const struct {
        const char *label;
        double f;
    } pq_[] = {
        {"99.9%", 0.999}, {"99.0%", 0.990}, {"95.0%", 0.950}, {"90.0%", 0.900}, {"75.0%", 0.750}, {NULL, 0.5},
        {"25.0%", 0.250}, {"10.0%", 0.100}, {" 5.0%", 0.050}, {" 1.0%", 0.010}, {" 0.1%", 0.001},
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(pq_); i++) {
        if (!pq_[i].label) fprintf(out, "Median  \xce\x94p: %6.3f%%\n", 100.0 * median(pv, n));
        else fprintf(out, "%s   \xce\x94p: %6.3f%%\n", pq_[i].label, 100.0 * percentile(pv, n, pq_[i].f));
    }
    fprintf(out, "Minimum \xce\x94p: %6.3f%%\n", 100.0 * pv[0]);
    double e_mse;
    const double mse = mean_err(k->sum_p_diff2, k->sum_p_diff4, n, &e_mse);
    const double rms = sqrt(mse);
    fprintf(out, "RMS \xce\x94p    : %6.3f \xc2\xb1 %5.3f %%\n", 100 * rms, rms > 0 ? 100 * 0.5 / rms * e_mse : 0.0);
    const double top = (double)k->n_same_top / (double)n;
    fprintf(out, "Same top p: %6.3f \xc2\xb1 %5.3f %%\n", 100 * top, 100 * sqrt(top * (1 - top) / (double)(n - 1)));
}

/* ---- the base file ---- */

uint64_t pi_ppl_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t pi_ppl_model_fingerprint(const pi_gguf_t *g)
{
    const unsigned char *base = pi_gguf_base(g);
    const uint64_t size = pi_gguf_file_size(g), data = pi_gguf_data_offset(g);
    PI_ASSERT(data <= size);
    uint64_t h = pi_ppl_hash(PI_PPL_HASH_INIT, &size, sizeof size);
    h = pi_ppl_hash(h, base, (size_t)data);
    const uint64_t span = size - data, block = 4096, samples = 64;
    for (uint64_t s = 0; s < samples && span > 0; s++) {
        uint64_t off = data + (span > block ? (span - block) * s / (samples - 1) : 0);
        h = pi_ppl_hash(h, base + off, (size_t)PI_MIN(block, size - off));
    }
    return h;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

int pi_kld_write_header(FILE *f, const char *path, const struct pi_kld_header *h, const int32_t *tokens)
{
    unsigned char b[64] = {0};
    memcpy(b, PI_KLD_MAGIC, 8);
    put32(b + 8, h->version), put32(b + 12, h->n_vocab), put32(b + 16, h->n_ctx), put32(b + 20, h->n_chunk);
    put32(b + 24, h->n_scored), put64(b + 32, h->model_bytes), put64(b + 40, h->model_hash);
    put64(b + 48, h->tokens_hash);
    const size_t n_tok = (size_t)h->n_chunk * h->n_ctx;
    /* int32 ids as little-endian bytes: the hosts pinfer runs on are little-endian (configure) */
    if (fwrite(b, 1, sizeof b, f) != sizeof b || fwrite(tokens, sizeof(int32_t), n_tok, f) != n_tok) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: write failed: %s\n", path, strerror(errno));
        return -PI_ERR_IO;
    }
    return 0;
}

/* One line about a base file that does not fit this run. */
__attribute__((format(printf, 2, 3))) static int refuse(const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: ", path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return -PI_ERR_INVAL;
}

int pi_kld_read_header(FILE *f, const char *path, int32_t n_vocab, uint64_t model_bytes, uint64_t model_hash,
                       struct pi_kld_header *h, int32_t **tokens)
{
    unsigned char b[64];
    *tokens = NULL;
    if (fread(b, 1, sizeof b, f) != sizeof b || memcmp(b, PI_KLD_MAGIC, 8) != 0) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: not a pi-perplexity base file (no %s header)\n", path,
                PI_KLD_MAGIC);
        return -PI_ERR_INVAL;
    }
    memset(h, 0, sizeof *h);
    memcpy(h->magic, b, 8);
    h->version = get32(b + 8), h->n_vocab = get32(b + 12), h->n_ctx = get32(b + 16), h->n_chunk = get32(b + 20);
    h->n_scored = get32(b + 24), h->model_bytes = get64(b + 32), h->model_hash = get64(b + 40);
    h->tokens_hash = get64(b + 48);
    if (h->version != PI_KLD_VERSION)
        return refuse(path, "version %u, this program reads version %u", h->version, PI_KLD_VERSION);
    if (h->n_ctx < 8 || h->n_ctx > (1u << 20) || h->n_ctx % 2 || h->n_chunk < 1 || h->n_chunk > (1u << 24) ||
        h->n_scored != h->n_ctx - 1 - h->n_ctx / 2 || h->n_vocab < 1 || h->n_vocab > (1u << 24))
        return refuse(path, "malformed header (n_ctx %u, n_chunk %u, n_vocab %u)", h->n_ctx, h->n_chunk, h->n_vocab);
    if (h->n_vocab != (uint32_t)n_vocab)
        return refuse(path, "made with a vocabulary of %u tokens, this model has %d", h->n_vocab, (int)n_vocab);
    if (h->model_bytes != model_bytes || h->model_hash != model_hash)
        return refuse(path, "made with another model (%llu bytes, fingerprint %016llx), not this one",
                      (unsigned long long)h->model_bytes, (unsigned long long)h->model_hash);
    /* the size must be exactly the header's: a truncated or padded file is refused before any run */
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: fstat failed: %s\n", path, strerror(errno));
        return -PI_ERR_IO;
    }
    const uint64_t n_tok = (uint64_t)h->n_chunk * h->n_ctx;
    uint64_t want = 0, rows = 0, logp = 0;
    if (pi_mul_overflows((uint64_t)h->n_chunk, (uint64_t)h->n_scored, &rows) ||
        pi_mul_overflows(rows, (uint64_t)h->n_vocab * 4u, &logp) || pi_add_overflows(64 + 4 * n_tok, logp, &want))
        return refuse(path, "its header's sizes overflow");
    if ((uint64_t)st.st_size != want)
        return refuse(path, "%llu bytes, its header says %llu: truncated or not a base file",
                      (unsigned long long)st.st_size, (unsigned long long)want);
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n_tok);
    if (!t) return -PI_ERR_NOMEM;
    if (fread(t, sizeof(int32_t), (size_t)n_tok, f) != (size_t)n_tok) {
        free(t);
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: short read of its %llu token ids\n", path,
                (unsigned long long)n_tok);
        return -PI_ERR_INVAL;
    }
    if (pi_ppl_hash(PI_PPL_HASH_INIT, t, sizeof(int32_t) * (size_t)n_tok) != h->tokens_hash) {
        free(t);
        fprintf(stderr, "pi-perplexity: --kl-divergence-base %s: its token ids do not match their hash\n", path);
        return -PI_ERR_INVAL;
    }
    for (uint64_t i = 0; i < n_tok; i++)
        if (t[i] < 0 || t[i] >= n_vocab) {
            const int bad_id = (int)t[i];
            free(t);
            return refuse(path, "token id %d at %llu is out of the vocabulary", bad_id, (unsigned long long)i);
        }
    *tokens = t;
    return 0;
}
