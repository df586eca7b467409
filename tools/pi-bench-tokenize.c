/*
 * tools/pi-bench-tokenize.c - tokenizer throughput (MB/s of text), for doc/tokenizer.md. Not installed.
 *
 *   pi-bench-tokenize [--mb N] [--repeat R] [--inp FILE] VOCAB.gguf...
 *
 * For each vocabulary it tokenizes two texts of N MB (default 2) in one pi_tokenize() call each and
 * reports the best of R runs (default 3): "prose", random English words with punctuation and line
 * breaks, and "mixed", llama.cpp's tokenizer test strings (--inp, a .gguf.inp file: code, emoji,
 * CJK, whitespace runs) repeated. Run it under `nice`; it is single-threaded.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/common.h"
#include "model/gguf.h"
#include "lib/log.h"
#include "text/tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *make_prose(size_t len)
{
    static const char *const words[] = {
        "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
        "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
        "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
        "who", "so", "no", "jury", "said", "found", "many", "laws", "government", "question", "people", "during",
        "between", "important", "development", "information", "although", "everything", "nineteen", "1961", "42",
    };
    static const char *const seps[] = {" ", " ", " ", " ", " ", " ", ", ", ". ", ".\n", "; ", " (", ") ", "'s "};
    char *s = malloc(len + 64);
    size_t n = 0;
    unsigned r = 12345;
    while (s && n < len) {
        r = r * 1103515245u + 12345u;
        const char *w = words[(r >> 8) % PI_ARRAY_LEN(words)];
        const char *p = seps[(r >> 20) % PI_ARRAY_LEN(seps)];
        n += (size_t)sprintf(s + n, "%s%s", w, p);
    }
    return s;
}

static char *make_mixed(const char *inp, size_t len)
{
    FILE *f = fopen(inp, "rb");
    char chunk[1 << 14];
    size_t k = f ? fread(chunk, 1, sizeof chunk, f) : 0;
    if (f) fclose(f);
    if (k == 0) return NULL;
    char *s = malloc(len + k);
    for (size_t n = 0; s && n < len; n += k) memcpy(s + n, chunk, k);
    return s;
}

static void bench(const char *vocab, const char *what, const char *text, size_t len, int repeat)
{
    char err[256];
    pi_gguf_t *g = NULL;
    if (pi_gguf_open(vocab, &g, err, sizeof err) < 0) {
        fprintf(stderr, "pi-bench-tokenize: %s: %s\n", vocab, err);
        return;
    }
    pi_tokenizer_t *t = pi_tokenizer_new(g, err, sizeof err);
    int32_t *ids = malloc((len + 16) * sizeof(*ids));
    if (!t || !ids) {
        fprintf(stderr, "pi-bench-tokenize: %s: %s\n", vocab, t ? "out of memory" : err);
        goto out;
    }
    double best = 1e30;
    size_t n = 0;
    for (int r = 0; r < repeat; r++) {
        double t0 = now();
        if (pi_tokenize(t, text, len, false, false, ids, len + 16, &n) < 0) break;
        best = PI_MIN(best, now() - t0);
    }
    const char *base = strrchr(vocab, '/');
    printf("| %-28s | %-3s %-14s | %-5s | %6.2f | %8.3f | %7.2f | %9.2f |\n", base ? base + 1 : vocab,
           pi_tokenizer_kind(t) == PI_TOKENIZER_SPM ? "spm" : pi_tokenizer_kind(t) == PI_TOKENIZER_WPM ? "wpm" : "bpe",
           pi_tokenizer_pre(t), what, (double)len / 1e6, best,
           (double)len / 1e6 / best, (double)n / best / 1e6);
out:
    free(ids);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"mb", required_argument, NULL, 'n'}, {"repeat", required_argument, NULL, 'r'},
        {"inp", required_argument, NULL, 'i'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
    };
    double mb = 2;
    int repeat = 3, c;
    const char *inp = NULL;
    pi_log_set_program("pi-bench-tokenize");
    while ((c = getopt_long(argc, argv, "n:r:i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': mb = atof(optarg); break;
        case 'r': repeat = atoi(optarg); break;
        case 'i': inp = optarg; break;
        default:
            fprintf(c == 'h' ? stdout : stderr, "Usage: pi-bench-tokenize [--mb N (2)] [--repeat R (3)] [--inp FILE.inp] VOCAB.gguf...\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (optind >= argc || mb <= 0 || mb > 16 || repeat < 1) {
        fprintf(stderr, "Usage: pi-bench-tokenize [--mb N (2, at most 16)] [--repeat R (3)] [--inp FILE.inp] VOCAB.gguf...\n");
        return 2;
    }
    size_t len = (size_t)(mb * 1e6);
    char *prose = make_prose(len), *mixed = inp ? make_mixed(inp, len) : NULL;
    if (!prose) return 1;
    printf("| vocabulary                   | family             | text  |     MB |        s |    MB/s | Mtokens/s |\n");
    printf("|------------------------------|--------------------|-------|--------|----------|---------|-----------|\n");
    for (int i = optind; i < argc; i++) {
        bench(argv[i], "prose", prose, len, repeat);
        if (mixed) bench(argv[i], "mixed", mixed, len, repeat);
    }
    free(prose);
    free(mixed);
    return 0;
}
