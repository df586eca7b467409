/*
 * tests/unit/test-tokenizer.c - tokenizers against llama.cpp's own test vectors, and bad input.
 *
 * For every ggml-vocab-NAME.gguf with its .inp/.out (made by llama.cpp's tests/test-tokenizer-0
 * with no BOS and special tokens not parsed; see tests/data/README and the fixtures' SOURCE.txt)
 * each string must tokenize to exactly the recorded ids. llama-spm and phi-3 are in tests/data so
 * the SentencePiece path is always tested; the others come from $PI_FIXTURES and are skipped,
 * naming the file, when absent (several upstream .gguf files were too large to bring).
 *
 * Also: a 1 MB run of one character and random bytes (invalid UTF-8, NULs) finish with a defined
 * result (a generous hang bound, not a speed test), malformed vocabularies are refused with an
 * error, never a crash; 300 random hostile vocabularies per run (seed printed, PI_SEED repeats) are
 * refused exactly when they have a defect and otherwise tokenize and detokenize as the contracts
 * say; vocabularies built to make merging or the special-token scan quadratic hit the work budget.
 */
#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/common.h"
#include "model/gguf.h"
#include "model/model-gen.h"
#include "model/model.h"
#include "text/tokenizer.h"
#include "text/unicode.h"
#include "tests/tap.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        if (buf) {
            buf[n] = 0;
            *len = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static pi_tokenizer_t *open_tok(const char *path, pi_gguf_t **g)
{
    char err[256];
    if (pi_gguf_open(path, g, err, sizeof err) < 0) {
        tap_diag("open %s: %s", path, err);
        return NULL;
    }
    pi_tokenizer_t *t = pi_tokenizer_new(*g, err, sizeof err);
    if (!t) tap_diag("tokenizer %s: %s", path, err);
    return t;
}

/* Print s with non-printable bytes escaped, for diagnostics. */
static void diag_escaped(const char *label, const char *s, size_t n)
{
    char buf[400];
    size_t w = 0;
    for (size_t i = 0; i < n && w + 5 < sizeof buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != 0x7F) buf[w++] = (char)c;
        else w += (size_t)snprintf(buf + w, sizeof buf - w, "\\x%02x", c);
    }
    buf[w] = 0;
    tap_diag("  %s \"%s\"", label, buf);
}

static void diag_ids(const char *label, const int32_t *v, size_t n)
{
    char buf[600];
    size_t w = 0;
    for (size_t i = 0; i < n && w + 16 < sizeof buf; i++) w += (size_t)snprintf(buf + w, sizeof buf - w, " %d", v[i]);
    tap_diag("  %s%s", label, buf);
}

/* Compare one string; returns 1 when it matches. */
static int check_one(const pi_tokenizer_t *t, const char *s, size_t n, const char *line, int *shown)
{
    size_t cap = 4 * n + 16, got_n = 0, want_n = 0;
    int32_t *got = malloc(cap * sizeof(*got)), *want = malloc((strlen(line) / 2 + 2) * sizeof(*want));
    int ok = 0;
    if (!got || !want) tap_bail("out of memory");
    for (char *p = (char *)line, *e;; p = e) {
        long v = strtol(p, &e, 10);
        if (e == p) break;
        want[want_n++] = (int32_t)v;
    }
    if (pi_tokenize(t, s, n, false, false, got, cap, &got_n) == 0)
        ok = got_n == want_n && memcmp(got, want, got_n * sizeof(*got)) == 0;
    if (!ok && (*shown)++ < 4) {
        diag_escaped("text", s, n);
        diag_ids("got: ", got, got_n);
        diag_ids("want:", want, want_n);
    }
    free(got);
    free(want);
    return ok;
}

/* Run one vocabulary's vectors: in_path/out_path are the .inp/.out files. */
static void run_vectors(const char *name, const char *gguf, const char *in_path, const char *out_path)
{
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t in_len, out_len;
    pi_gguf_t *g = NULL;
    char *in = slurp(in_path, &in_len), *out = slurp(out_path, &out_len);
    pi_tokenizer_t *t = open_tok(gguf, &g);
    if (!in || !out || !t) {
        tap_ok(0, "vocab %s: loads with its vectors", name);
        goto done;
    }
    int total = 0, matched = 0, shown = 0;
    char *line = out, *p = in;
    for (char *q; (q = strstr(p, sep)) != NULL; p = q + sizeof(sep) - 1) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        *nl = 0;
        total++;
        matched += check_one(t, p, (size_t)(q - p), line, &shown);
        line = nl + 1;
    }
    tap_ok(total > 0 && matched == total, "vocab %s (%s, pre %s): %d/%d strings match llama.cpp", name,
           pi_tokenizer_kind(t) == PI_TOKENIZER_SPM ? "spm" : pi_tokenizer_kind(t) == PI_TOKENIZER_WPM ? "wpm" : "bpe",
           pi_tokenizer_pre(t), matched, total);
done:
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
    free(in);
    free(out);
}

static void vocab_from_fixtures(const char *name)
{
    char rel[256], gguf[1024], in[1024], out[1024];
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf", name);
    if (!tap_fixture(gguf, sizeof gguf, rel)) {
        char why[300];
        snprintf(why, sizeof why, "%s not found", rel);
        tap_skip(1, why);
        return;
    }
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.inp", name);
    if (!tap_fixture(in, sizeof in, rel)) {
        char why[300];
        snprintf(why, sizeof why, "%s not found (upstream has no vectors for it)", rel);
        tap_skip(1, why);
        return;
    }
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.out", name);
    if (!tap_fixture(out, sizeof out, rel)) {
        char why[300];
        snprintf(why, sizeof why, "%s not found", rel);
        tap_skip(1, why);
        return;
    }
    run_vectors(name, gguf, in, out);
}

static void vocab_from_data(const char *name)
{
    char rel[256], gguf[1024], in[1024], out[1024];
    snprintf(rel, sizeof rel, "ggml-vocab-%s.gguf", name);
    tap_data(gguf, sizeof gguf, rel);
    snprintf(rel, sizeof rel, "ggml-vocab-%s.gguf.inp", name);
    tap_data(in, sizeof in, rel);
    snprintf(rel, sizeof rel, "ggml-vocab-%s.gguf.out", name);
    tap_data(out, sizeof out, rel);
    run_vectors(name, gguf, in, out);
}

/* A random model given name's vocabulary by pi-gen-model's --vocab-from (pi_model_gen.vocab_from)
 * tokenizes its vectors exactly as the vocabulary file does: every tokenizer key came across. */
static void vocab_copied(const char *name)
{
    char rel[256], gguf[1024], in[1024], out[1024], model[1024], err[256];
    snprintf(rel, sizeof rel, "ggml-vocab-%s.gguf", name);
    tap_data(gguf, sizeof gguf, rel);
    snprintf(rel, sizeof rel, "ggml-vocab-%s.gguf.inp", name);
    tap_data(in, sizeof in, rel);
    snprintf(rel, sizeof rel, "ggml-vocab-%s.gguf.out", name);
    tap_data(out, sizeof out, rel);
    snprintf(model, sizeof model, "%s/pi-test-vocab-%d.gguf", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    struct pi_model_gen g = {0};
    pi_model_gen_preset("tiny", &g);
    g.type = PI_TYPE_Q8_0;
    g.vocab_from = gguf;
    int rc = pi_model_gen_vocab_size(gguf, &g.n_vocab, err, sizeof err);
    if (rc == 0) rc = pi_model_gen_write(&g, model);
    tap_ok(rc == 0, "a random model with %s's vocabulary (%d tokens) is written", name, g.n_vocab);
    snprintf(rel, sizeof rel, "%s copied into a model", name);
    if (rc == 0) run_vectors(rel, model, in, out);
    else tap_skip(1, "no model");
    g.n_vocab++; /* a vocabulary whose size is not the model's is refused */
    tap_ok(pi_model_gen_write(&g, model) == -PI_ERR_INVAL, "a %s vocabulary of another size than the model's is refused", name);
    unlink(model);
}

/* Pre-tokenizer splits against tests/data/pretok-vectors.txt (Python's `regex` module; see
 * tools/gen-pretok-vectors.py and tests/data/README): every family, including llama3 and qwen2
 * whose vocabulary files are too large to bring. */
static void pretok_vectors(void)
{
    char path[1024], line[8192];
    tap_data(path, sizeof path, "pretok-vectors.txt");
    FILE *f = fopen(path, "r");
    if (!f) tap_bail("cannot open %s", path);
    char fam[32] = "";
    int total = 0, matched = 0, shown = 0;
    for (;;) {
        char *l = fgets(line, sizeof line, f);
        char *tab1 = l ? strchr(l, '\t') : NULL, *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        if (l && (!tab1 || !tab2)) tap_bail("malformed line in %s", path);
        if (fam[0] && (!l || strncmp(l, fam, (size_t)(tab1 - l)) != 0 || fam[tab1 - l] != 0)) {
            tap_ok(total > 0 && matched == total, "pre-tokenizer %s: %d/%d random strings split as llama.cpp does", fam,
                   matched, total);
            total = matched = 0;
        }
        if (!l) break;
        snprintf(fam, sizeof fam, "%.*s", (int)(tab1 - l), l);
        char text[8192], want[512];
        size_t tn = 0, wn = 0, got[512], gn = 0;
        for (char *p = tab1 + 1, *e; p < tab2; p = e) {
            unsigned long cp = strtoul(p, &e, 16);
            if (e == p) break;
            tn += pi_utf8_encode((uint32_t)cp, text + tn);
        }
        for (char *p = tab2 + 1, *e; wn < sizeof want; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            want[wn++] = (char)v;
        }
        int ok = pi_pretokenize(fam, text, tn, got, 512, &gn) == 0 && gn == wn;
        for (size_t i = 0; ok && i < gn; i++) ok = got[i] == (size_t)(unsigned char)want[i];
        total++;
        matched += ok;
        if (!ok && shown++ < 3) diag_escaped(fam, text, tn);
    }
    fclose(f);
    size_t n = 0;
    tap_ok(pi_pretokenize("no-such-pre", "x", 1, NULL, 0, &n) == -PI_ERR_NOTFOUND, "pre-tokenizer: unknown name refused");
}

/* Special tokens in text (parse_special), with llama.cpp's name-keyed whitespace stripping: a
 * model named like Phi-3 drops blanks after its special tokens, others keep them. Ids from the
 * vocabularies and their .out vectors: 15043 "▁Hello", 29871 "▁", 13 <0x0A>, 2 </s>, 32010
 * <|user|>, 32007 <|end|>, 32001 <|assistant|>. */
static void special_tokens(void)
{
    char path[1024];
    pi_gguf_t *g = NULL;
    int32_t ids[32];
    size_t n = 0;
    static const char chat[] = "<|user|>\nHello<|end|>\n<|assistant|>\n";
    tap_data(path, sizeof path, "ggml-vocab-phi-3.gguf");
    pi_tokenizer_t *t = open_tok(path, &g);
    int rc = pi_tokenize(t, chat, strlen(chat), true, true, ids, 32, &n);
    tap_ok(rc == 0 && n == 5 && ids[0] == 1 && ids[1] == 32010 && ids[2] == 15043 && ids[3] == 32007 && ids[4] == 32001,
           "phi-3 (general.name Phi3): chat markers parsed, the newlines after them stripped (%zu ids)", n);
    rc = pi_tokenize(t, "</s>\n", 5, false, false, ids, 32, &n);
    tap_ok(rc == 0 && n == 1 && ids[0] == 2, "phi-3: user-defined </s> is cut out even without parse_special, blank stripped");
    rc = pi_tokenize(t, chat, strlen(chat), false, false, ids, 32, &n);
    tap_ok(rc == 0 && n > 5 && ids[0] != 32010, "phi-3: without parse_special the markers are plain text (%zu ids)", n);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
    tap_data(path, sizeof path, "ggml-vocab-llama-spm.gguf");
    t = open_tok(path, &g);
    rc = pi_tokenize(t, "</s>\n", 5, false, true, ids, 32, &n);
    tap_ok(rc == 0 && n == 3 && ids[0] == 2 && ids[1] == 29871 && ids[2] == 13,
           "llama-spm: </s> parsed, the newline after it kept, with the space prefix (\"▁\" <0x0A>)");
    rc = pi_tokenize(t, "</s>", 4, false, false, ids, 32, &n);
    tap_ok(rc == 0 && n > 1, "llama-spm: control </s> is plain text without parse_special");
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
}

/* Large and hostile input: bounded time, a defined result. */
static void hostile_input(const char *gguf)
{
    pi_gguf_t *g = NULL;
    pi_tokenizer_t *t = open_tok(gguf, &g);
    size_t n = 1 << 20, n_out = 0;
    char *s = malloc(n);
    int32_t *ids = malloc(n * 2 * sizeof(*ids) + 64);
    if (!t || !s || !ids) tap_bail("setup failed");
    const char *label = pi_tokenizer_kind(t) == PI_TOKENIZER_BPE ? pi_tokenizer_pre(t)
                        : pi_tokenizer_kind(t) == PI_TOKENIZER_SPM ? "spm" : "wpm";
    static const char chars[] = {'a', ' ', '\n', '3', '!'};
    for (size_t c = 0; c < sizeof chars; c++) {
        size_t len = c < 2 ? n : n / 4; /* 1 MB runs of 'a' and ' ', 256 KB of the rest (CI time) */
        memset(s, chars[c], len);
        double t0 = now();
        int rc = pi_tokenize(t, s, len, true, true, ids, n * 2 + 16, &n_out);
        double dt = now() - t0;
        /* a hang bound, not a speed test: quadratic work on 1 MB would take hours */
        tap_ok(rc == 0 && n_out > 0 && dt < 120.0, "%s: %zu KB of '%s' -> %zu tokens in %.2f s", label, len >> 10,
               chars[c] == '\n' ? "\\n" : chars[c] == ' ' ? "space" : (char[2]){chars[c], 0}, n_out, dt);
    }
    /* random bytes: invalid UTF-8, NULs, stray continuation bytes */
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    srand(seed);
    tap_diag("%s: random bytes with seed %u", label, seed);
    size_t m = 64 << 10;
    for (size_t i = 0; i < m; i++) s[i] = (char)(rand() & 0xFF);
    int rc = pi_tokenize(t, s, m, false, true, ids, n * 2 + 16, &n_out);
    tap_ok(rc == 0 && n_out > 0, "%s: 64 KiB of random bytes -> %zu tokens", label, n_out);
    int32_t ids_again[1];
    size_t need = 0;
    rc = pi_tokenize(t, "hello world", 11, true, false, ids_again, 1, &need);
    tap_ok(rc == -PI_ERR_RANGE && need >= 2, "a buffer too small: -PI_ERR_RANGE and the size needed (%zu)", need);
    rc = pi_tokenize(t, "", 0, false, false, NULL, 0, &need);
    tap_ok(rc == 0 && need == 0, "empty text without BOS: no tokens");
    free(s);
    free(ids);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
}

/* A vocabulary written by the GGUF writer with one thing wrong must be refused. */
static void bad_vocab(int which, const char *what)
{
    const char *tok[] = {"<unk>", "<s>", "</s>", "a", "b", "ab"};
    float scores[6] = {0, 0, 0, -1, -2, -0.5f};
    int32_t types[6] = {2, 3, 3, 1, 1, 1};
    char path[] = "/tmp/pi-test-tokenizer-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) tap_bail("mkstemp failed");
    close(fd);
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    pi_gguf_writer_set_str(w, "tokenizer.ggml.model", which == 0 ? "wordpiece-ish" : "llama");
    pi_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tok, which == 1 ? 0 : 6);
    pi_gguf_writer_set_arr(w, "tokenizer.ggml.scores", PI_GGUF_F32, scores, which == 2 ? 5 : 6);
    if (which == 3) types[4] = 9;
    pi_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", PI_GGUF_I32, types, 6);
    pi_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", which == 4 ? 6 : 1);
    if (which == 5) pi_gguf_writer_set_str(w, "tokenizer.ggml.scores2", "x");
    if (pi_gguf_writer_write(w, path) < 0) tap_bail("writing %s failed", path);
    pi_gguf_writer_destroy(&w);
    pi_gguf_t *g = NULL;
    char err[256] = "";
    if (pi_gguf_open(path, &g, err, sizeof err) < 0) tap_bail("reopen failed: %s", err);
    pi_tokenizer_t *t = pi_tokenizer_new(g, err, sizeof err);
    if (which == 5) {
        int32_t ids[8];
        size_t n = 0;
        tap_ok(t && pi_tokenize(t, "ab", 2, false, false, ids, 8, &n) == 0, "a well-formed tiny vocabulary loads");
        /* "▁ab": "▁" is not a token, so it falls back to its 3 bytes; there are no byte tokens,
         * so each becomes <unk> */
        tap_ok(n == 4 && ids[0] == 0 && ids[1] == 0 && ids[2] == 0 && ids[3] == 5,
               "tiny vocabulary: \"ab\" -> <unk> x3, ab (got %zu ids)", n);
    } else {
        tap_ok(t == NULL && err[0], "refused: %s (%s)", what, err);
    }
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
    unlink(path);
}

/* Code point classes and UTF-8 decoding against the Unicode Character Database's categories. */
static void unicode_tables(void)
{
    static const struct {
        uint32_t cp;
        uint16_t want;
        const char *what;
    } cls[] = {
        {0x41, PI_UCLS_LETTER, "A Lu"},
        {0x4E2D, PI_UCLS_LETTER, "U+4E2D Lo"},
        {0x0663, PI_UCLS_NUMBER, "ARABIC-INDIC DIGIT THREE Nd"},
        {0x2160, PI_UCLS_NUMBER, "ROMAN NUMERAL ONE Nl"},
        {0x3002, PI_UCLS_PUNCT, "IDEOGRAPHIC FULL STOP Po"},
        {0x24, PI_UCLS_SYMBOL, "$ Sc"},
        {0x1F600, PI_UCLS_SYMBOL, "U+1F600 So"},
        {0x0301, PI_UCLS_MARK, "COMBINING ACUTE ACCENT Mn"},
        {0x0378, PI_UCLS_UNDEFINED, "U+0378 Cn"},
        {0x3000, PI_UCLS_SEPARATOR | PI_UCLS_WHITESPACE, "IDEOGRAPHIC SPACE Zs + whitespace"},
        {0x0A, PI_UCLS_CONTROL | PI_UCLS_WHITESPACE, "LF Cc + whitespace"},
        {0x1C, PI_UCLS_CONTROL, "U+001C Cc, not whitespace"},
        {0x110000, 0, "past U+10FFFF: no class"},
    };
    int ok = 1;
    for (size_t i = 0; i < PI_ARRAY_LEN(cls); i++) {
        uint16_t got = pi_unicode_flags(cls[i].cp);
        if (got != cls[i].want) {
            ok = 0;
            tap_diag("  %s: flags 0x%x, want 0x%x", cls[i].what, got, cls[i].want);
        }
    }
    tap_ok(ok, "unicode: classes of 13 code points (Unicode %s tables)", pi_unicode_version);
    uint32_t cp;
    size_t a = pi_utf8_decode((const unsigned char *)"\xe4\xb8\xad", 3, &cp);
    int dec = a == 3 && cp == 0x4E2D;
    a = pi_utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 4, &cp);
    dec &= a == 4 && cp == 0x1F600;
    a = pi_utf8_decode((const unsigned char *)"\xe4\xb8", 2, &cp);
    dec &= a == 1 && cp == PI_UTF8_REPLACEMENT;
    a = pi_utf8_decode((const unsigned char *)"\x80", 1, &cp);
    dec &= a == 1 && cp == PI_UTF8_REPLACEMENT;
    a = pi_utf8_decode((const unsigned char *)"\xc3(", 2, &cp);
    dec &= a == 1 && cp == PI_UTF8_REPLACEMENT;
    tap_ok(dec, "unicode: UTF-8 decoding, and U+FFFD for truncated, stray and broken sequences");
    tap_ok(pi_unicode_nfd_first(0xE9) == 'e' && pi_unicode_nfd_first(0xC4) == 'A' && pi_unicode_nfd_first(0xAC00) == 0x1100 &&
               pi_unicode_nfd_first('x') == 'x' && pi_unicode_tolower(0xC4) == 0xE4 && pi_unicode_tolower(0x3A3) == 0x3C3 &&
               pi_unicode_tolower('Q') == 'q' && pi_unicode_tolower(0x4E2D) == 0x4E2D,
           "unicode: NFD first code point (e-acute -> e, A-umlaut -> A, Hangul GA -> jamo) and lowercase");
    tap_ok(pi_unicode_in_dsllm_letters('A') && pi_unicode_in_dsllm_letters(0xB5) && !pi_unicode_in_dsllm_letters(0xD7) &&
               !pi_unicode_in_dsllm_letters(0x4E2D),
           "unicode: DeepSeek-LLM letter class (A, micro sign in; multiplication sign, CJK out)");
}

/* ---- hostile vocabularies: random malformed metadata must load or be refused, never crash ---- */

static uint64_t fz_state;
static uint32_t fz_rand(void)
{
    fz_state = fz_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(fz_state >> 33);
}

/* Valid UTF-8 check (RFC 3629: no overlongs, surrogates or code points past U+10FFFF). */
static bool fz_valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char b = s[i];
        size_t len = b < 0x80 ? 1 : b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
        if (len == 0 || i + len > n) return false;
        unsigned char lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80, hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
        for (size_t k = 1; k < len; k++, lo = 0x80, hi = 0xBF)
            if (s[i + k] < lo || s[i + k] > hi) return false;
        i += len;
    }
    return true;
}

/* Random bytes from an alphabet that makes merges and special matches likely (NUL excluded: GGUF
 * strings from the writer are C strings). */
static size_t fz_text(char *buf, size_t max)
{
    static const char *const atoms[] = {"a", "b", " ", "\xe2\x96\x81", "\xc3\xa9", "\xc3", "\xa9", "\xff", "\x80",
                                        "<", ">", "\xc4\xa0", "\n", "1", "!", "<0x41>", "<s>", "\xf0\x9f\x98\x80"};
    size_t n = 0, want = fz_rand() % (max / 8 + 1);
    while (n < want) {
        const char *a = atoms[fz_rand() % PI_ARRAY_LEN(atoms)];
        size_t k = strlen(a);
        if (n + k >= max) break;
        memcpy(buf + n, a, k);
        n += k;
    }
    buf[n] = 0;
    return n;
}

/* The metadata of one random vocabulary: always hostile (empty pieces, invalid UTF-8, NaN and
 * infinite scores, duplicates, merges of unknown tokens, negative special ids), and for about half
 * of them with one defect that must make loading fail. Returns whether it has such a defect. */
static bool fz_write_vocab(pi_gguf_writer_t *w, uint32_t n)
{
    static const char *const models[] = {"llama", "gpt2", "bert"};
    static const char *const pres[] = {"default", "llama3", "qwen2", "gpt-2", "falcon", "deepseek-llm", "mpt"};
    static const char *const ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                      "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id",
                                      "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id"};
    uint32_t defect = fz_rand() % 28, model = fz_rand() % 3; /* defect >= 14: none */
    bool bpe = model == 1, wpm = model == 2;
    bool must_fail = defect == 0 || defect == 2 || defect == 4 || defect == 6 || defect == 7 || defect == 9 ||
                     defect == 10 || defect == 11 || defect == 12 || defect == 13 || (defect == 1 && wpm) ||
                     ((defect == 3 || defect == 5 || defect == 8) && bpe);
    char **tok = calloc(n, sizeof(*tok));
    float *scores = calloc(n + 1, sizeof(*scores));   /* + 1: defect 6 writes n + 1 */
    int32_t *types = malloc(n * sizeof(*types));
    uint32_t n_merges = fz_rand() % (2 * n + 1), bad_tok = fz_rand() % n;
    char **merges = calloc(n_merges + 1, sizeof(*merges));
    if (!tok || !scores || !types || !merges) tap_bail("out of memory");
    for (uint32_t i = 0; i < n; i++) {
        uint32_t r = fz_rand() % 100;
        size_t len = i == bad_tok && defect == 0 ? 70000 : i == bad_tok && defect == 1 ? 1500 : 24;
        tok[i] = malloc(len + 1);
        if (!tok[i]) tap_bail("out of memory");
        if (len > 24) memset(tok[i], 'a', len), tok[i][len] = 0; /* enormous / too long for WordPiece */
        else if (r < 4) tok[i][0] = 0;                          /* empty piece */
        else if (r < 12) snprintf(tok[i], len + 1, "<0x%02X>", fz_rand() % 256);
        else fz_text(tok[i], len);
        scores[i] = r == 2 ? NAN : r == 3 ? INFINITY : -(float)(fz_rand() % 1000) / 10.0f;
        types[i] = (int32_t)(fz_rand() % 7);
        if (i == bad_tok && defect == 2) types[i] = fz_rand() % 2 ? -1 : 7;
    }
    for (uint32_t i = 0; i < n_merges; i++) {
        merges[i] = malloc(64);
        if (!merges[i]) tap_bail("out of memory");
        if (fz_rand() % 4 == 0) snprintf(merges[i], 64, "zz%u q%u", i, i); /* unknown tokens */
        else { /* of two tokens (an empty side would be malformed: "x" instead) */
            const char *l = tok[fz_rand() % n], *r = tok[fz_rand() % n];
            snprintf(merges[i], 64, "%.20s %.20s", *l ? l : "x", *r ? r : "x");
        }
    }
    if (defect == 3) merges[n_merges++] = strdup(fz_rand() % 2 ? "ab" : " ");
    pi_gguf_writer_set_str(w, "tokenizer.ggml.model", defect == 4 ? "nonsense" : models[model]);
    if (fz_rand() % 2 || defect == 5) pi_gguf_writer_set_str(w, "tokenizer.ggml.pre", defect == 5 ? "no-such-pre" : pres[fz_rand() % PI_ARRAY_LEN(pres)]);
    if (defect == 12) pi_gguf_writer_set_strn(w, "tokenizer.ggml.pre", "llama3\0junk", 11); /* read as "llama3" before */
    if (defect == 13) pi_gguf_writer_set_strn(w, "tokenizer.chat_template", "\0{{ x }}", 8);
    pi_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, n);
    if (fz_rand() % 8 || defect == 6) pi_gguf_writer_set_arr(w, "tokenizer.ggml.scores", PI_GGUF_F32, scores, defect == 6 ? n + 1 : n);
    if (fz_rand() % 8 || defect == 2 || defect == 7)
        pi_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", defect == 7 ? PI_GGUF_F32 : PI_GGUF_I32, types, n);
    if (defect != 8) pi_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, n_merges);
    for (size_t k = 0; k < PI_ARRAY_LEN(ids); k++)
        if (fz_rand() % 2) pi_gguf_writer_set_i32(w, ids[k], (int32_t)(fz_rand() % n) - (int32_t)(fz_rand() % 2) * 1000);
    const char *key = ids[fz_rand() % PI_ARRAY_LEN(ids)];
    if (defect == 9) pi_gguf_writer_set_u32(w, key, fz_rand() % 2 ? UINT32_MAX : n);
    if (defect == 10) pi_gguf_writer_set_u64(w, key, UINT64_MAX);
    if (defect == 11) pi_gguf_writer_set_str(w, key, "1");
    if (fz_rand() % 4 == 0) pi_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", true);
    for (uint32_t i = 0; i < n; i++) free(tok[i]);
    for (uint32_t i = 0; i < n_merges; i++) free(merges[i]);
    free(tok), free(scores), free(types), free(merges);
    return must_fail;
}

/* Tokenize random text with t, detokenize the result and random ids (out of range too). 0 = all as
 * the contracts say. */
static int fz_exercise(const pi_tokenizer_t *t)
{
    int32_t nv = pi_tokenizer_n_vocab(t), ids[4096];
    char text[2048], *out = NULL;
    int bad = 0;
    size_t cap = pi_detok_max_push(t), n = 0, len;
    out = malloc(cap);
    pi_detok_t *d = pi_detok_new(t, fz_rand() % 2);
    if (!out || !d) tap_bail("out of memory");
    for (int rep = 0; rep < 4; rep++) {
        size_t tl = fz_text(text, sizeof text);
        if (fz_rand() % 2 && nv > 0) { /* splice a vocabulary text in, special ones included */
            const char *s = pi_token_text(t, (int32_t)(fz_rand() % (uint32_t)nv), &len);
            if (s && tl + len < sizeof text) memcpy(text + tl, s, len), tl += len;
        }
        int rc = pi_tokenize(t, text, tl, fz_rand() % 2, fz_rand() % 2, ids, PI_ARRAY_LEN(ids), &n);
        if (rc == -PI_ERR_UNSUPPORTED) continue; /* SentencePiece without byte tokens nor <unk> */
        if (rc != 0 && ++bad) tap_diag("  pi_tokenize: %s", pi_err_str(rc));
        for (size_t i = 0; rc == 0 && i < n; i++) {
            if ((ids[i] < 0 || ids[i] >= nv) && ++bad) tap_diag("  id %d out of range", ids[i]);
            int w = pi_detok_push(d, ids[i], out, cap);
            if ((w < 0 || !fz_valid_utf8((unsigned char *)out, (size_t)w)) && ++bad) tap_diag("  detok of %d: %d", ids[i], w);
        }
    }
    static const int32_t wild[] = {-1, INT32_MIN, INT32_MAX};
    char cs[8];
    for (size_t k = 0; k < PI_ARRAY_LEN(wild) + 1; k++) {
        int32_t id = k < PI_ARRAY_LEN(wild) ? wild[k] : nv;
        if (pi_detok_push(d, id, out, cap) != -PI_ERR_INVAL || pi_token_piece(t, id, &len) || len ||
            pi_token_text(t, id, &len) || pi_tokenizer_is_eog(t, id) || pi_token_cstr(t, id, cs, sizeof cs) != 0 || cs[0])
            bad++, tap_diag("  id %d out of range accepted", id);
    }
    if (nv > 0) { /* pi_token_cstr: the text with a NUL, or -1 and "" where it does not fit or holds one */
        const int32_t id = (int32_t)(fz_rand() % (uint32_t)nv);
        const char *s = pi_token_text(t, id, &len);
        const int want = len < sizeof cs && !memchr(s, '\0', len) ? 1 : -1;
        const int got = pi_token_cstr(t, id, cs, sizeof cs);
        if (got != want || (want == 1 ? strlen(cs) != len || memcmp(cs, s, len) : cs[0] != '\0'))
            bad++, tap_diag("  pi_token_cstr of %d: %d, want %d", id, got, want);
    }
    int w = pi_detok_flush(d, out, cap);
    if (w < 0 || !fz_valid_utf8((unsigned char *)out, (size_t)w)) bad++;
    pi_detok_destroy(&d);
    free(out);
    return bad;
}

/* Write w to a temporary file (destroying w), reopen it and build its tokenizer; NULL with the
 * reason in err when the vocabulary is refused. The file is gone on return, so this also checks
 * that a tokenizer does not depend on its GGUF file staying open. */
static pi_tokenizer_t *tok_from_writer(pi_gguf_writer_t **w, char *err, size_t errlen)
{
    char path[] = "/tmp/pi-test-tokenizer-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) tap_bail("mkstemp failed");
    close(fd);
    if (pi_gguf_writer_write(*w, path) < 0) tap_bail("writing %s failed", path);
    pi_gguf_writer_destroy(w);
    pi_gguf_t *g = NULL;
    if (pi_gguf_open(path, &g, err, errlen) < 0) tap_bail("reopen failed: %s", err);
    err[0] = 0;
    pi_tokenizer_t *t = pi_tokenizer_new(g, err, errlen);
    pi_gguf_destroy(&g);
    unlink(path);
    return t;
}

/* Tokens "a", "aa", ..., "a" x k with the longer ones scored higher: merging a run of 'a' grows one
 * symbol a byte at a time, each candidate costing its length (O(n * k)). The work budget must stop
 * a long run with -PI_ERR_RANGE, while a short run still encodes, and decodes back to its text. */
static void growing_vocab(void)
{
    enum { K = 2048 };
    char **tok = calloc(K + 2, sizeof(*tok));
    float *scores = calloc(K + 2, sizeof(*scores));
    int32_t *types = calloc(K + 2, sizeof(*types));
    if (!tok || !scores || !types) tap_bail("out of memory");
    tok[0] = strdup("<unk>"), types[0] = PI_TOKEN_UNKNOWN;
    for (int k = 1; k <= K; k++) {
        tok[k] = malloc((size_t)k + 1);
        if (!tok[k]) tap_bail("out of memory");
        memset(tok[k], 'a', (size_t)k);
        tok[k][k] = 0;
        scores[k] = (float)k;
        types[k] = PI_TOKEN_NORMAL;
    }
    tok[K + 1] = strdup("|"), types[K + 1] = PI_TOKEN_USER_DEFINED; /* cuts a text into fragments */
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    pi_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    pi_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, K + 2);
    pi_gguf_writer_set_arr(w, "tokenizer.ggml.scores", PI_GGUF_F32, scores, K + 2);
    pi_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", PI_GGUF_I32, types, K + 2);
    pi_gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", false);
    for (int k = 0; k <= K + 1; k++) free(tok[k]);
    free(tok), free(scores), free(types);
    char err[256] = "";
    pi_tokenizer_t *t = tok_from_writer(&w, err, sizeof err);
    if (!t) tap_bail("growing vocabulary refused: %s", err);
    size_t big = 1 << 20, small = 3000, n = 0, back = 0;
    char *s = malloc(big), *out = malloc(small + 16);
    int32_t *ids = malloc(big * sizeof(*ids));
    if (!s || !out || !ids) tap_bail("out of memory");
    memset(s, 'a', big);
    double t0 = now();
    int rc = pi_tokenize(t, s, big, false, false, ids, big, &n);
    tap_ok(rc == -PI_ERR_RANGE, "growing vocabulary: 1 MiB of 'a' stops at the work budget (rc %d, %.2f s)", rc, now() - t0);
    rc = pi_tokenize(t, s, small, false, false, ids, big, &n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t l;
        const char *p = pi_token_piece(t, ids[i], &l);
        if (!p || back + l > small) break;
        memcpy(out + back, p, l), back += l;
    }
    tap_ok(rc == 0 && n == 2 && back == small && memcmp(out, s, small) == 0,
           "growing vocabulary: %zu bytes of 'a' -> a%d + a%zu (%zu ids) and back", small, K, small - K, n);
    /* the same runs cut apart by a user-defined token: the budget is the request's, not granted
     * again for every fragment (which accepted 16 MiB of such text after 21 s) */
    const size_t cut = 512 << 10;
    for (size_t i = small; i < cut; i += small + 1) s[i] = '|';
    t0 = now();
    rc = pi_tokenize(t, s, cut, false, true, ids, big, &n);
    tap_ok(rc == -PI_ERR_RANGE, "growing vocabulary: 512 KiB of %zu-byte runs of 'a' between '|' tokens stop at the request's "
           "work budget (rc %d, %.2f s)", small, rc, now() - t0);
    free(s), free(out), free(ids);
    pi_tokenizer_destroy(&t);
}

/* 1024 user-defined tokens "yx", "yxx", ... (recognised in any text): every 'y' starts a scan of
 * 1024 candidate lengths. A long run of 'y' must stop at the work budget; a short text must still
 * cut the special token out exactly. */
static void special_flood(void)
{
    enum { K = 1024 };
    char **tok = calloc(K + 3, sizeof(*tok));
    int32_t *types = calloc(K + 3, sizeof(*types));
    if (!tok || !types) tap_bail("out of memory");
    tok[0] = strdup("<unk>"), types[0] = PI_TOKEN_UNKNOWN;
    tok[1] = strdup("y"), types[1] = PI_TOKEN_NORMAL;
    tok[2] = strdup("\xe2\x96\x81"), types[2] = PI_TOKEN_NORMAL;
    for (int k = 1; k <= K; k++) {
        tok[k + 2] = malloc((size_t)k + 2);
        if (!tok[k + 2]) tap_bail("out of memory");
        tok[k + 2][0] = 'y';
        memset(tok[k + 2] + 1, 'x', (size_t)k);
        tok[k + 2][k + 1] = 0;
        types[k + 2] = PI_TOKEN_USER_DEFINED;
    }
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    pi_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    pi_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, K + 3);
    pi_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", PI_GGUF_I32, types, K + 3);
    for (int k = 0; k < K + 3; k++) free(tok[k]);
    free(tok), free(types);
    char err[256] = "";
    pi_tokenizer_t *t = tok_from_writer(&w, err, sizeof err);
    if (!t) tap_bail("special-token vocabulary refused: %s", err);
    size_t big = 1 << 20, n = 0;
    char *s = malloc(big);
    int32_t *ids = malloc(big * sizeof(*ids));
    if (!s || !ids) tap_bail("out of memory");
    memset(s, 'y', big);
    double t0 = now();
    int rc = pi_tokenize(t, s, big, false, false, ids, big, &n);
    tap_ok(rc == -PI_ERR_RANGE, "1024 specials sharing a first byte: 1 MiB of it stops at the work budget (rc %d, %.2f s)",
           rc, now() - t0);
    memcpy(s + 100, "yxxx", 4); /* 100 'y', "yxxx", 100 'y' */
    rc = pi_tokenize(t, s, 204, false, false, ids, big, &n);
    int ok = rc == 0 && n == 203 && ids[0] == 2 && ids[101] == 3 + 2 && ids[102] == 2;
    for (size_t i = 1; ok && i < n; i++) ok = i == 101 || i == 102 || ids[i] == 1;
    tap_ok(ok, "1024 specials: \"y\" x 100 + \"yxxx\" + \"y\" x 100 -> \u2581 y.. yxxx \u2581 y.. (%zu ids)", n);
    free(s), free(ids);
    pi_tokenizer_destroy(&t);
}

static void hostile_vocabs(int count)
{
    const char *s = getenv("PI_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    fz_state = seed;
    tap_diag("hostile vocabularies: seed %llu (set PI_SEED to repeat)", (unsigned long long)seed);
    int loaded = 0, refused = 0, silent = 0, bad = 0, wrong = 0;
    for (int i = 0; i < count; i++) {
        pi_gguf_writer_t *w = pi_gguf_writer_new();
        if (!w) tap_bail("out of memory");
        bool must_fail = fz_write_vocab(w, 1 + fz_rand() % 40);
        char err[256] = "";
        pi_tokenizer_t *t = tok_from_writer(&w, err, sizeof err);
        if (must_fail != !t) {
            wrong++;
            tap_diag("  vocabulary %d: %s (%s)", i, t ? "loaded despite a defect" : "refused without one", err);
        }
        if (!t) {
            refused++;
            silent += err[0] == 0;
            continue;
        }
        loaded++;
        bad += fz_exercise(t);
        pi_tokenizer_destroy(&t);
    }
    tap_ok(silent == 0 && wrong == 0, "hostile vocabularies: %d refused, each with a reason (%d without), "
           "exactly those with a defect (%d wrong)", refused, silent, wrong);
    tap_ok(loaded > 0 && bad == 0, "hostile vocabularies: %d loaded; tokenize + detokenize (random and out-of-range ids) "
           "as the contracts say (%d violations)", loaded, bad);
}

int main(void)
{
    unicode_tables();
    /* SentencePiece, always present (tests/data) */
    vocab_from_data("llama-spm");
    vocab_from_data("phi-3");
    vocab_copied("llama-spm");
    /* the rest from the shared fixtures */
    static const char *const fixtures[] = {
        "baichuan", "llama-bpe", "qwen2", "deepseek-r1-qwen", "gpt-2", "falcon", "mpt", "starcoder", "refact",
        "deepseek-llm", "deepseek-coder", "gpt-neox", "command-r", "roberta-bpe", "chameleon", "bert-bge",
    };
    for (size_t i = 0; i < PI_ARRAY_LEN(fixtures); i++) vocab_from_fixtures(fixtures[i]);
    pretok_vectors();
    special_tokens();

    char path[1024];
    tap_data(path, sizeof path, "ggml-vocab-llama-spm.gguf");
    hostile_input(path);
    if (tap_fixture(path, sizeof path, "vocab/ggml-vocab-gpt-2.gguf")) hostile_input(path);
    else tap_skip(7, "vocab/ggml-vocab-gpt-2.gguf not found");
    if (tap_fixture(path, sizeof path, "vocab/ggml-vocab-bert-bge.gguf")) hostile_input(path);
    else tap_skip(7, "vocab/ggml-vocab-bert-bge.gguf not found");

    bad_vocab(0, "unknown tokenizer.ggml.model");
    bad_vocab(1, "empty token list");
    bad_vocab(2, "scores shorter than tokens");
    bad_vocab(3, "token type out of range");
    bad_vocab(4, "bos_token_id out of range");
    bad_vocab(5, "");
    hostile_vocabs(300);
    growing_vocab();
    special_flood();
    return tap_done();
}
