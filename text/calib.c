/*
 * text/calib.c - the ids a model is calibrated over: a calibration text or random ids (text/calib.h).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "lib/rng.h"
#include "text/tokenizer.h"
#include "text/calib.h"

enum { EXIT_USAGE = 2 };

/* The whole file at path (NUL-terminated copy) in *out, *len bytes. 0 or EXIT_USAGE / 1 (printed). */
static int read_text(const char *prog, const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open calibration text %s: %s\n", prog, path, strerror(errno));
        return EXIT_USAGE;
    }
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap + 1);
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n > PI_TOKENIZE_MAX_BYTES) break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL; /* reported below as out of memory: never a silently shorter text */
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    bool err = ferror(f) != 0;
    fclose(f);
    if (!buf || err) {
        fprintf(stderr, "%s: reading %s failed\n", prog, path);
        free(buf);
        return 1;
    }
    if (n > PI_TOKENIZE_MAX_BYTES) {
        fprintf(stderr, "%s: %s is larger than %zu MiB, the most one run tokenizes\n", prog, path,
                PI_TOKENIZE_MAX_BYTES >> 20);
        free(buf);
        return EXIT_USAGE;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int pi_calib_tokens(const struct pi_calib_args *a, const pi_model_t *m, int32_t **ids, size_t *n, int32_t *bos)
{
    *bos = -1;
    if (a->random_tokens) {
        struct pi_rng rng;
        *n = (size_t)a->random_tokens;
        if (!(*ids = malloc(*n * sizeof **ids))) return 1;
        pi_rng_seed(&rng, a->seed);
        for (size_t i = 0; i < *n; i++) (*ids)[i] = (int32_t)(pi_rng_below(&rng, (uint64_t)m->hp.n_vocab));
        return 0;
    }
    char err[256], *text = NULL;
    size_t len = 0;
    const char *path = a->text ? a->text : a->default_text;
    if (pi_gguf_find_key(m->gguf, "tokenizer.ggml.model") < 0) {
        fprintf(stderr, "%s: %s has no tokenizer; use --random N for such models\n", a->prog, a->model);
        return EXIT_USAGE;
    }
    pi_tokenizer_t *tok = pi_tokenizer_new(m->gguf, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "%s: %s: no usable tokenizer (%s); use --random N for such models\n", a->prog, a->model, err);
        return EXIT_USAGE;
    }
    int rc = read_text(a->prog, path, &text, &len);
    if (rc == 0) {
        *ids = malloc((len + 2) * sizeof **ids); /* at most a token per byte, plus BOS and EOS */
        rc = !*ids ? 1 : pi_tokenize(tok, text, len, true, false, *ids, len + 2, n) < 0 ? 1 : 0;
        *bos = pi_tokenizer_bos(tok);
        if (rc) fprintf(stderr, "%s: tokenizing %s failed\n", a->prog, path);
    }
    free(text);
    pi_tokenizer_destroy(&tok);
    return rc;
}
