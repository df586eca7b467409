/*
 * tests/unit/test-detok.c - the demo model's tokenizer end to end, and the streaming detokenizer.
 *
 *  - golden prompts: the `tokens` tensors of the golden files (made by the fixture authors with the
 *    models' own tokenizers) must equal what we produce for the same prompt with BOS, for the demo
 *    model (its own SentencePiece BPE, 8192 pieces) and the tiny llama (LLaMA's 32000 pieces);
 *  - hand-checked strings for the demo vocabulary, reasoned from the piece table of the source
 *    SentencePiece model (../shared/fixtures/demo/tokenizer.model; ids and scores quoted below);
 *  - round trips: fresh random text (ASCII words, accented letters, CJK, emoji, tabs, newlines)
 *    tokenized then detokenized token by token gives back the text byte for byte;
 *  - the detokenizer holds split UTF-8 sequences and replaces invalid bytes with U+FFFD.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/common.h"
#include "model/gguf.h"
#include "text/tokenizer.h"
#include "lib/types.h"
#include "tests/tap.h"

/* tests/data/rel when committed there, else the shared fixture fix_rel, else NULL. */
static const char *find_file(char *buf, size_t len, const char *rel, const char *fix_rel)
{
    const char *root = getenv("PI_SRCDIR");
    struct stat st;
    snprintf(buf, len, "%s/tests/data/%s", root && *root ? root : ".", rel);
    if (stat(buf, &st) == 0) return buf;
    return tap_fixture(buf, len, fix_rel);
}

static pi_tokenizer_t *open_tok(const char *path, pi_gguf_t **g)
{
    char err[256];
    if (pi_gguf_open(path, g, err, sizeof err) < 0) tap_bail("open %s: %s", path, err);
    pi_tokenizer_t *t = pi_tokenizer_new(*g, err, sizeof err);
    if (!t) tap_bail("tokenizer %s: %s", path, err);
    return t;
}

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    if (na != nb) return 0;
    for (size_t i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void golden(const char *what, const char *model_rel, const char *model_fix, const char *golden_rel,
                   const char *golden_fix, const char *prompt)
{
    char mp[1024], gp[1024], err[256];
    if (!find_file(mp, sizeof mp, model_rel, model_fix) || !find_file(gp, sizeof gp, golden_rel, golden_fix)) {
        tap_skip(1, "golden model or file not found");
        return;
    }
    pi_gguf_t *g = NULL, *gg = NULL;
    pi_tokenizer_t *t = open_tok(mp, &g);
    if (pi_gguf_open(gp, &gg, err, sizeof err) < 0) tap_bail("open %s: %s", gp, err);
    const struct pi_gguf_tensor *tt = pi_gguf_find_tensor(gg, "tokens");
    if (!tt || tt->type != PI_TYPE_I32 || tt->n_elems > 256) tap_bail("%s: no I32 tokens tensor", gp);
    int32_t want[256], got[256];
    memcpy(want, tt->data, tt->n_elems * sizeof(int32_t));
    size_t n = 0;
    int rc = pi_tokenize(t, prompt, strlen(prompt), true, false, got, 256, &n);
    int ok = tap_ok(rc == 0 && ids_equal(got, n, want, (size_t)tt->n_elems), "%s: BOS + \"%s\" -> the golden %llu tokens",
                    what, prompt, (unsigned long long)tt->n_elems);
    if (!ok)
        for (size_t i = 0; i < PI_MAX(n, (size_t)tt->n_elems); i++)
            tap_diag("  %zu: got %d want %d", i, i < n ? got[i] : -1, i < tt->n_elems ? want[i] : -1);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
    pi_gguf_destroy(&gg);
}

/* Strings whose ids follow from tokenizer.model's piece table (id: piece, score):
 *   345 "▁The" -86, 5202 "▁jury" -4943, 595 "▁said" -336, 263 "▁the" -4, 259 "▁t" 0, 260 "he" -1,
 *   294 "▁th" -35, 4388 "▁▁" -4129, 7814 "▁" -7555, 3151 "▁Paris" -2892, 7836 "." -7577;
 *   there is no piece for "\n", "中", "▁中", "▁▁the" or "▁Paris."; byte pieces <0xNN> are id 3 + NN. */
static void hand_checked(const pi_tokenizer_t *t)
{
    static const struct {
        const char *text;
        int32_t ids[8];
        size_t n;
        const char *why;
    } cases[] = {
        {"The jury said", {345, 5202, 595}, 3, "whole-word pieces"},
        /* "▁▁the": ▁t (0) merges first, then he (-1), then ▁t+he = ▁the (-4); ▁▁t is no piece */
        {" the", {7814, 263}, 2, "a second space stays a lone \"▁\""},
        {"Paris.", {3151, 7836}, 2, "no piece spans the full stop"},
        {"\xe4\xb8\xad", {7814, 3 + 0xE4, 3 + 0xB8, 3 + 0xAD}, 4, "byte fallback for a character the vocabulary lacks"},
        {"\n", {7814, 3 + 0x0A}, 2, "newline by byte fallback"},
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(cases); i++) {
        int32_t got[64];
        size_t n = 0;
        int rc = pi_tokenize(t, cases[i].text, strlen(cases[i].text), false, false, got, 64, &n);
        if (!tap_ok(rc == 0 && ids_equal(got, n, cases[i].ids, cases[i].n), "demo: hand-checked string %zu (%s)", i,
                    cases[i].why))
            for (size_t k = 0; k < n; k++) tap_diag("  got[%zu] = %d", k, got[k]);
    }
    int32_t bos[4];
    size_t n = 0;
    tap_ok(pi_tokenize(t, "", 0, true, false, bos, 4, &n) == 0 && n == 1 && bos[0] == 1, "demo: empty text with BOS -> <s>");
    tap_ok(pi_tokenizer_is_eog(t, 2) && !pi_tokenizer_is_eog(t, 1) && pi_tokenizer_eos(t) == 2,
           "demo: </s> ends generation, <s> does not");
}

/* Decode ids one by one through a detokenizer; returns a malloc'd NUL-terminated string. */
static char *detok_all(const pi_tokenizer_t *t, const int32_t *ids, size_t n, bool strip, int *valid_each)
{
    pi_detok_t *d = pi_detok_new(t, strip);
    size_t cap = pi_detok_max_push(t), len = 0;
    char *out = malloc(n * cap + 16), *chunk = malloc(cap);
    *valid_each = 1;
    for (size_t i = 0; i < n; i++) {
        int w = pi_detok_push(d, ids[i], chunk, cap);
        if (w < 0) tap_bail("detok push failed: %d", w);
        memcpy(out + len, chunk, (size_t)w);
        len += (size_t)w;
    }
    int w = pi_detok_flush(d, out + len, 16);
    if (w < 0) tap_bail("detok flush failed");
    len += (size_t)w;
    out[len] = 0;
    pi_detok_destroy(&d);
    free(chunk);
    return out;
}

static const char *const alphabet[] = {
    "the", "jury", "said", "Paris", "caf\xc3\xa9", "na\xc3\xafve", "\xe4\xb8\xad\xe6\x96\x87", "\xf0\x9f\x98\x80",
    "x", "42", "!", ",", "\t", "\n", " ", "  ", "\xce\xb1\xce\xb2", "Zebra's", "<s>", "\xd0\xbc\xd0\xb8\xd1\x80",
};

static void round_trips(const pi_tokenizer_t *t, const char *what, int count)
{
    char text[512];
    int32_t ids[1024];
    int ok = 0, shown = 0;
    bool strip = pi_tokenizer_kind(t) == PI_TOKENIZER_SPM; /* undo the space prefix */
    for (int k = 0; k < count; k++) {
        size_t len = 0, n = 0;
        int words = 1 + rand() % 12, valid;
        for (int w = 0; w < words; w++) {
            const char *a = alphabet[rand() % (int)PI_ARRAY_LEN(alphabet)];
            if (w) text[len++] = ' ';
            memcpy(text + len, a, strlen(a));
            len += strlen(a);
        }
        text[len] = 0;
        if (pi_tokenize(t, text, len, false, false, ids, 1024, &n) < 0) continue;
        char *back = detok_all(t, ids, n, strip, &valid);
        if (strcmp(back, text) == 0) ok++;
        else if (shown++ < 3) tap_diag("  round trip: \"%s\" -> \"%s\"", text, back);
        free(back);
    }
    tap_ok(ok == count, "%s: %d/%d random texts round-trip through tokenize + streaming detokenize", what, ok, count);
}

/* True when s[0..n) is valid UTF-8 (RFC 3629). */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t k = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return 0;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F) || (c == 0xF0 && s[i + 1] < 0x90) ||
            (c == 0xF4 && s[i + 1] > 0x8F))
            return 0;
        i += k;
    }
    return 1;
}

static void streaming(const pi_tokenizer_t *t)
{
    char out[64];
    pi_detok_t *d = pi_detok_new(t, false);
    /* 中 = E4 B8 AD as three byte tokens: nothing until the third */
    int a = pi_detok_push(d, 3 + 0xE4, out, sizeof out), b = pi_detok_push(d, 3 + 0xB8, out, sizeof out);
    int c = pi_detok_push(d, 3 + 0xAD, out, sizeof out);
    tap_ok(a == 0 && b == 0 && c == 3 && memcmp(out, "\xe4\xb8\xad", 3) == 0, "detok: a split character is held until complete");
    /* an invalid byte and a truncated sequence followed by a letter */
    a = pi_detok_push(d, 3 + 0xFF, out, sizeof out);
    tap_ok(a == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0, "detok: byte 0xFF -> U+FFFD");
    a = pi_detok_push(d, 3 + 0xE4, out, sizeof out);
    b = pi_detok_push(d, 3 + 'a', out, sizeof out);
    tap_ok(a == 0 && b == 4 && memcmp(out, "\xef\xbf\xbd" "a", 4) == 0, "detok: truncated sequence then 'a' -> U+FFFD a");
    a = pi_detok_push(d, 3 + 0xF0, out, sizeof out);
    b = pi_detok_flush(d, out, sizeof out);
    tap_ok(a == 0 && b == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0, "detok: flush turns a held lead byte into U+FFFD");
    /* three bytes held (F0 9F 98 of an emoji) still flush as one U+FFFD into the 4 bytes the header
     * promises suffice (refused before: found by tests/unit/fuzz-tokenizer); a smaller buffer is
     * refused without losing what is held */
    char small[4];
    a = pi_detok_push(d, 3 + 0xF0, out, sizeof out);
    b = pi_detok_push(d, 3 + 0x9F, out, sizeof out);
    c = pi_detok_push(d, 3 + 0x98, out, sizeof out);
    int r2 = pi_detok_flush(d, small, 2), r4 = pi_detok_flush(d, small, sizeof small);
    tap_ok(a == 0 && b == 0 && c == 0 && r2 == -PI_ERR_RANGE && r4 == 3 && memcmp(small, "\xef\xbf\xbd", 3) == 0,
           "detok: flush of 3 held bytes fits in 4 bytes (%d, %d)", r2, r4);
    tap_ok(pi_detok_push(d, -1, out, sizeof out) == -PI_ERR_INVAL && pi_detok_push(d, 345, out, 1) == -PI_ERR_RANGE,
           "detok: bad id and small buffer are errors");
    /* random token streams: every chunk is valid UTF-8 */
    size_t cap = pi_detok_max_push(t);
    char *chunk = malloc(cap);
    int all_valid = 1;
    for (int i = 0; i < 5000; i++) {
        int32_t id = rand() % pi_tokenizer_n_vocab(t);
        int w = pi_detok_push(d, id, chunk, cap);
        if (w < 0 || !valid_utf8((unsigned char *)chunk, (size_t)w)) all_valid = 0;
    }
    int w = pi_detok_flush(d, chunk, cap);
    tap_ok(all_valid && w >= 0 && valid_utf8((unsigned char *)chunk, (size_t)w), "detok: 5000 random tokens, every chunk valid UTF-8");
    free(chunk);
    pi_detok_destroy(&d);
    pi_detok_destroy(&d); /* NULL is fine */
}

int main(void)
{
    char path[1024];
    const char *env = getenv("PI_SEED");
    unsigned seed = env ? (unsigned)strtoul(env, NULL, 0) : (unsigned)time(NULL) ^ (unsigned)getpid();
    srand(seed);
    tap_diag("seed %u (set PI_SEED to repeat)", seed);
    golden("demo", "demo-relu-q4_0.gguf", "demo/demo-relu-q4_0.gguf", "demo-relu-q4_0.golden.gguf",
           "demo/golden/demo-relu-q4_0.golden.gguf", "The jury said it did find that many of the laws");
    golden("tiny-llama", "tiny-llama-q4_0.gguf", "models/tiny-llama-q4_0.gguf", "tiny-llama-q4_0.golden.gguf",
           "golden/tiny-llama-q4_0.golden.gguf", "The capital of France is");
    if (!find_file(path, sizeof path, "demo-relu-q4_0.gguf", "demo/demo-relu-q4_0.gguf")) {
        tap_skip(1, "demo model not found");
        return tap_done();
    }
    pi_gguf_t *g = NULL;
    pi_tokenizer_t *t = open_tok(path, &g);
    hand_checked(t);
    round_trips(t, "demo", 300);
    streaming(t);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
    if (find_file(path, sizeof path, "ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-llama-spm.gguf")) {
        t = open_tok(path, &g);
        round_trips(t, "llama-spm", 300);
        pi_tokenizer_destroy(&t);
        pi_gguf_destroy(&g);
    }
    if (tap_fixture(path, sizeof path, "vocab/ggml-vocab-gpt-2.gguf")) {
        t = open_tok(path, &g);
        round_trips(t, "gpt-2", 300);
        pi_tokenizer_destroy(&t);
        pi_gguf_destroy(&g);
    } else {
        tap_skip(1, "vocab/ggml-vocab-gpt-2.gguf not found");
    }
    return tap_done();
}
