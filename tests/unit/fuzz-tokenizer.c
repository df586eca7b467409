/*
 * tests/unit/fuzz-tokenizer.c - libFuzzer target for tokenizer input (text/tokenizer.h: pi_tokenize
 * on any bytes a client sends, then the streaming detokenizer; `make fuzz`, needs clang).
 *
 * Vocabularies, chosen by an input's first byte (modulo the table's size): the demo model's
 * SentencePiece vocabulary, llama.cpp's llama-spm and phi-3 ones (all three in tests/data), and,
 * where the shared fixtures are present (PI_FIXTURES, else ../shared/fixtures beside the source
 * tree), byte-level BPE (gpt-2) and WordPiece (bert-bge); a slot whose file is absent skips the
 * input. The second byte holds the flags (bit 0 parse_special, bit 1 add_bos); the rest is the text.
 *
 * What must hold for every input (text/tokenizer.h promises it):
 *   - pi_tokenize returns 0, or -PI_ERR_UNSUPPORTED only for a SentencePiece vocabulary without byte
 *     tokens or <unk> (none of these); asking for the size (cap 0) gives the count the real call
 *     fills, and two calls give the same ids (the per-tokenizer hash seed changes nothing);
 *   - every id is in [0, n_vocab);
 *   - the streaming detokenizer takes every id, each chunk (with a buffer of pi_detok_max_push
 *     bytes) and the flush are valid UTF-8;
 *   - round trip, where it is guaranteed: for text that is valid UTF-8, tokenized without specials
 *     and BOS into normal and byte tokens only, SentencePiece with its space prefix and byte
 *     fallback (the three in tests/data; text without U+2581, which SentencePiece reads as its own
 *     space mark) and byte-level BPE give back exactly the text. Not claimed: where an <unk> was
 *     needed, or a user-defined token matched (recognised even without parse_special, as llama.cpp
 *     does, and SentencePiece then puts its space prefix before the text after it, as llama.cpp
 *     does: "a</s>b" comes back "a</s> b" with phi-3's vocabulary); nor for WordPiece, which
 *     lowercases and drops accents.
 * Built with ASan and UBSan. Seeds: tests/unit/fuzz-tokenizer-seeds/. Not part of `make check`.
 */
#include "config.h"
#include "lib/common.h"
#include "lib/log.h"
#include "model/gguf.h"
#include "text/tokenizer.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PI_FUZZ_SRCDIR
#error "PI_FUZZ_SRCDIR (the source tree, for tests/data) is set by the Makefile"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz-tokenizer: %s:%d: broken: %s\n", __FILE__, __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static struct vocab {
    const char *file; /* under tests/data (fixture 0) or the shared fixtures (fixture 1) */
    int fixture;
    bool round_trip; /* valid UTF-8 must come back exactly (see the header) */
    pi_gguf_t *g;
    pi_tokenizer_t *t;
} vocabs[] = {
    {"demo-relu-q4_0.gguf", 0, true, NULL, NULL},
    {"ggml-vocab-llama-spm.gguf", 0, true, NULL, NULL},
    {"ggml-vocab-phi-3.gguf", 0, true, NULL, NULL},
    {"vocab/ggml-vocab-gpt-2.gguf", 1, true, NULL, NULL},
    {"vocab/ggml-vocab-bert-bge.gguf", 1, false, NULL, NULL},
};

static void setup(void)
{
    const char *fix = getenv("PI_FIXTURES");
    char path[1024], err[256];
    struct stat st;
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC); /* pi_tokenize logs every refusal */
    if (!fix || !*fix) fix = PI_FUZZ_SRCDIR "/../shared/fixtures";
    for (size_t i = 0; i < PI_ARRAY_LEN(vocabs); i++) {
        struct vocab *v = &vocabs[i];
        snprintf(path, sizeof path, "%s/%s", v->fixture ? fix : PI_FUZZ_SRCDIR "/tests/data", v->file);
        if (v->fixture && stat(path, &st) != 0) continue; /* the fixtures are optional */
        if (pi_gguf_open(path, &v->g, err, sizeof err) != 0 || !(v->t = pi_tokenizer_new(v->g, err, sizeof err))) {
            fprintf(stderr, "fuzz-tokenizer: %s: %s\n", path, err);
            abort();
        }
    }
    if (devnull >= 0) pi_log_set_fd(devnull);
}

/* True when s[0..n) is valid UTF-8 (RFC 3629: no overlong forms, surrogates or code points past
 * U+10FFFF). */
static bool valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t k = c < 0x80                 ? 1
                   : c >= 0xC2 && c <= 0xDF ? 2
                   : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4
                                            : 0;
        if (!k || i + k > n) return false;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return false;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F) || (c == 0xF0 && s[i + 1] < 0x90) ||
            (c == 0xF4 && s[i + 1] > 0x8F))
            return false;
        i += k;
    }
    return true;
}

/* The text of ids[0..n) through the streaming detokenizer, every chunk checked; *len set. */
static char *detok_all(const pi_tokenizer_t *t, const int32_t *ids, size_t n, bool strip, size_t *len)
{
    const size_t cap = pi_detok_max_push(t);
    char *out = malloc(n * cap + 4 + 1), *p = out;
    pi_detok_t *d = pi_detok_new(t, strip);
    CHECK(out && d);
    for (size_t i = 0; i < n; i++) {
        int w = pi_detok_push(d, ids[i], p, cap);
        CHECK(w >= 0 && (size_t)w <= cap && valid_utf8((const unsigned char *)p, (size_t)w));
        p += w;
    }
    int w = pi_detok_flush(d, p, 4);
    CHECK(w >= 0 && valid_utf8((const unsigned char *)p, (size_t)w));
    p += w;
    pi_detok_destroy(&d);
    *len = (size_t)(p - out);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) setup(), ready = true;
    if (size < 2) return 0;
    const struct vocab *v = &vocabs[data[0] % PI_ARRAY_LEN(vocabs)];
    if (!v->t) return 0;
    const pi_tokenizer_t *t = v->t;
    const bool special = data[1] & 1, bos = data[1] & 2;
    const size_t len = size - 2;
    /* the text in an allocation of its own, so that ASan sees a read past its end */
    char *text = malloc(len ? len : 1);
    CHECK(text);
    memcpy(text, data + 2, len);

    size_t need = 0, n = 0, n2 = 0;
    int rc = pi_tokenize(t, text, len, bos, special, NULL, 0, &need);
    CHECK(rc == 0 || rc == -PI_ERR_RANGE);
    CHECK(rc == 0 ? need == 0 : need > 0);
    int32_t *ids = malloc((need ? need : 1) * sizeof *ids), *again = malloc((need ? need : 1) * sizeof *ids);
    CHECK(ids && again);
    CHECK(pi_tokenize(t, text, len, bos, special, ids, need, &n) == 0 && n == need);
    CHECK(pi_tokenize(t, text, len, bos, special, again, need, &n2) == 0 && n2 == n);
    CHECK(n == 0 || memcmp(ids, again, n * sizeof *ids) == 0);

    bool plain = true; /* only normal and byte tokens */
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] >= 0 && ids[i] < pi_tokenizer_n_vocab(t));
        const enum pi_token_type ty = pi_token_type_of(t, ids[i]);
        plain &= ty == PI_TOKEN_NORMAL || ty == PI_TOKEN_BYTE;
    }
    const bool spm = pi_tokenizer_kind(t) == PI_TOKENIZER_SPM;
    size_t back_len;
    char *back = detok_all(t, ids, n, spm, &back_len);
    if (v->round_trip && !special && !bos && plain && valid_utf8((const unsigned char *)text, len) &&
        !(spm && memmem(text, len, "\xe2\x96\x81", 3))) {
        if (back_len != len || memcmp(back, text, len) != 0) {
            fprintf(stderr, "fuzz-tokenizer: %s: %zu bytes of text came back as %zu different bytes\n", v->file, len,
                    back_len);
            abort();
        }
    }
    free(back);
    free(ids);
    free(again);
    free(text);
    return 0;
}
