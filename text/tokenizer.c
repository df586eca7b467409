/*
 * text/tokenizer.c - building a tokenizer from GGUF metadata, and the request path common to every
 * family: special-token partition, then the family's encoder on each stretch of raw text.
 *
 * Loading validates everything it reads (a vocabulary is untrusted input): array types and
 * lengths, token types, special ids, merges, the pre-tokenizer name. Strings are copied into one
 * arena so that the tokenizer does not depend on the GGUF mapping staying open.
 *
 * Exactness target: llama.cpp's llama_tokenize (src/llama-vocab.cpp in ggml-org/llama.cpp), whose
 * test vectors are in ../shared/fixtures/vocab. Its rules, restated:
 *  - special tokens are cut out of the text first; user-defined tokens always, control and unknown
 *    ones only when parse_special is set (we take the longest match at the leftmost position;
 *    llama.cpp scans the specials longest first, which differs only for overlapping specials);
 *  - some models strip blanks around their special tokens, keyed on general.name (phi-3, ...);
 *  - SentencePiece adds a space before the first raw fragment and after each special token;
 *  - BOS/EOS follow the file's add_bos_token/add_eos_token flags (WordPiece: [CLS] ... [SEP]).
 */
#include "config.h"

#include "text/tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/common.h"
#include "lib/log.h"
#include "text/tokenizer-impl.h"
#include "text/unicode.h"

#define MAX_VOCAB (1u << 24)
#define MAX_TOKEN_BYTES 65536u

/* Texts llama.cpp treats as end of generation (and forces to control type). */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
    "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
};

/* ---- small shared helpers ---- */

int pi_ivec_push(struct pi_ivec *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->v, cap * sizeof(*p));
        if (!p) return -PI_ERR_NOMEM;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = id;
    return 0;
}

uint32_t pi_tok_hash(const pi_tokenizer_t *t, const char *s, size_t n)
{
    uint32_t h = pi_tok_hash_init(t);
    for (size_t i = 0; i < n; i++) h = pi_tok_hash_step(h, (unsigned char)s[i]);
    return pi_tok_hash_final(t, h);
}

/* A seed the vocabulary's author cannot know in advance (it need not be cryptographic: it only
 * has to make precomputed colliding keys useless). */
static uint32_t hash_seed(const void *addr)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)(uintptr_t)addr ^ (uint64_t)getpid() << 16;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x;
}

int64_t pi_strmap_find(const struct pi_strmap *m, const pi_tokenizer_t *t, const struct pi_tstr *keys,
                       const char *s, size_t n)
{
    return pi_strmap_find_hashed(m, t, keys, s, n, pi_tok_hash(t, s, n));
}

int64_t pi_strmap_find_hashed(const struct pi_strmap *m, const pi_tokenizer_t *t, const struct pi_tstr *keys,
                              const char *s, size_t n, uint32_t h)
{
    if (!m->slot) return -1;
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slot[i];
        if (v == 0) return -1;
        if (m->hash[i] == h && keys[v - 1].len == n && memcmp(pi_tstr_ptr(t, keys[v - 1]), s, n) == 0)
            return (int64_t)v - 1;
    }
}

/* Insert index idx (key keys[idx]); an equal key already present is replaced (last one wins). */
static void strmap_put(struct pi_strmap *m, const pi_tokenizer_t *t, const struct pi_tstr *keys, uint32_t idx)
{
    const char *s = pi_tstr_ptr(t, keys[idx]);
    uint32_t n = keys[idx].len, h = pi_tok_hash(t, s, n);
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slot[i];
        if (v == 0 || (m->hash[i] == h && keys[v - 1].len == n && memcmp(pi_tstr_ptr(t, keys[v - 1]), s, n) == 0)) {
            m->slot[i] = idx + 1;
            m->hash[i] = h;
            return;
        }
    }
}

static int strmap_init(struct pi_strmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    m->slot = calloc(cap, sizeof(*m->slot));
    m->hash = calloc(cap, sizeof(*m->hash));
    m->mask = (uint32_t)(cap - 1);
    return m->slot && m->hash ? 0 : -PI_ERR_NOMEM;
}

static void strmap_free(struct pi_strmap *m)
{
    free(m->slot);
    free(m->hash);
    m->slot = m->hash = NULL;
}

/* Append n bytes to the arena; stores where they went in *out. The arena is allocated even when every
 * string is empty, so that pi_tstr_ptr() never does arithmetic on (or hands memcmp) a NULL pointer. */
static int arena_add(pi_tokenizer_t *t, size_t *cap, const char *s, size_t n, struct pi_tstr *out)
{
    if (t->arena_len + n > UINT32_MAX) return -PI_ERR_RANGE;
    if (!t->arena || t->arena_len + n > *cap) {
        size_t c = *cap ? *cap : 1 << 16;
        while (c < t->arena_len + n) c *= 2;
        char *p = realloc(t->arena, c);
        if (!p) return -PI_ERR_NOMEM;
        t->arena = p;
        *cap = c;
    }
    if (n) memcpy(t->arena + t->arena_len, s, n);
    out->off = (uint32_t)t->arena_len;
    out->len = (uint32_t)n;
    t->arena_len += n;
    return 0;
}

/* ---- loading ---- */

struct loader {
    pi_tokenizer_t *t;
    const pi_gguf_t *g;
    char *err;
    size_t errlen;
    size_t arena_cap;
    char *scratch; /* MAX_TOKEN_BYTES + 16, for building pieces */
};

__attribute__((format(printf, 2, 3))) static int fail(struct loader *L, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    pi_error("tokenizer: %s", buf);
    if (L->err && L->errlen) snprintf(L->err, L->errlen, "%s", buf);
    return -PI_ERR_FORMAT;
}

/* A typed array of the vocabulary's length; absent is fine (returns NULL and 0). */
static int vocab_array(struct loader *L, const char *key, enum pi_gguf_vtype want, const void **data)
{
    enum pi_gguf_vtype type;
    uint64_t n;
    *data = NULL;
    int rc = pi_gguf_get_arr(L->g, key, &type, &n);
    if (rc == -PI_ERR_NOTFOUND) return 0;
    if (rc < 0) return fail(L, "%s is not an array", key);
    if (type != want) return fail(L, "%s has element type %d, want %d", key, (int)type, (int)want);
    if (n != L->t->n_vocab) return fail(L, "%s has %llu entries, tokens %u", key, (unsigned long long)n, L->t->n_vocab);
    *data = pi_gguf_arr_data(L->g, key);
    if (!*data && n) return fail(L, "%s: no data", key);
    return 0;
}

static int load_tokens(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    enum pi_gguf_vtype type;
    uint64_t n;
    if (pi_gguf_get_arr(L->g, "tokenizer.ggml.tokens", &type, &n) < 0) return fail(L, "tokenizer.ggml.tokens missing");
    if (type != PI_GGUF_STRING) return fail(L, "tokenizer.ggml.tokens is not a string array");
    if (n == 0 || n > MAX_VOCAB) return fail(L, "tokenizer.ggml.tokens has %llu entries (1..%u allowed)", (unsigned long long)n, MAX_VOCAB);
    t->n_vocab = (uint32_t)n;
    t->text = calloc(n, sizeof(*t->text));
    t->piece = calloc(n, sizeof(*t->piece));
    t->score = calloc(n, sizeof(*t->score));
    t->type = calloc(n, 1);
    t->eog = calloc(n, 1);
    t->strip = calloc(n, 1);
    if (!t->text || !t->piece || !t->score || !t->type || !t->eog || !t->strip) return -PI_ERR_NOMEM;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        struct pi_gguf_str s;
        if (pi_gguf_arr_str(L->g, "tokenizer.ggml.tokens", i, &s) < 0) return fail(L, "token %u unreadable", i);
        if (s.len > MAX_TOKEN_BYTES || (t->kind == PI_TOKENIZER_WPM && s.len > PI_WPM_MAX_TOKEN))
            return fail(L, "token %u is %llu bytes long", i, (unsigned long long)s.len);
        t->max_text = PI_MAX(t->max_text, (uint32_t)s.len);
        int rc = arena_add(t, &L->arena_cap, s.ptr, (size_t)s.len, &t->text[i]);
        if (rc < 0) return rc;
    }
    const void *scores, *types;
    int rc = vocab_array(L, "tokenizer.ggml.scores", PI_GGUF_F32, &scores);
    if (rc < 0) return rc;
    rc = vocab_array(L, "tokenizer.ggml.token_type", PI_GGUF_I32, &types);
    if (rc < 0) return rc;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        int32_t ty = PI_TOKEN_NORMAL;
        if (scores) memcpy(&t->score[i], (const char *)scores + 4 * (size_t)i, 4);
        if (types) memcpy(&ty, (const char *)types + 4 * (size_t)i, 4);
        if (ty < PI_TOKEN_UNDEFINED || ty > PI_TOKEN_BYTE) return fail(L, "token %u has type %d (0..6 allowed)", i, ty);
        t->type[i] = (uint8_t)ty;
    }
    return 0;
}

static int load_merges(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    enum pi_gguf_vtype type;
    uint64_t n;
    int rc = pi_gguf_get_arr(L->g, "tokenizer.ggml.merges", &type, &n);
    if (rc == -PI_ERR_NOTFOUND) return fail(L, "tokenizer.ggml.merges missing (required for BPE)");
    if (rc < 0 || type != PI_GGUF_STRING) return fail(L, "tokenizer.ggml.merges is not a string array");
    if (n > MAX_VOCAB) return fail(L, "tokenizer.ggml.merges has %llu entries", (unsigned long long)n);
    t->n_merges = (uint32_t)n;
    t->merge = calloc(n ? n : 1, sizeof(*t->merge));
    if (!t->merge || strmap_init(&t->merge_map, n) < 0) return -PI_ERR_NOMEM;
    for (uint32_t i = 0; i < t->n_merges; i++) {
        struct pi_gguf_str s;
        if (pi_gguf_arr_str(L->g, "tokenizer.ggml.merges", i, &s) < 0) return fail(L, "merge %u unreadable", i);
        /* "left right": the separator is the first space after the first byte (llama.cpp's rule) */
        if (s.len < 3 || s.len > MAX_TOKEN_BYTES || !memchr(s.ptr + 1, ' ', s.len - 1))
            return fail(L, "merge %u is not \"left right\"", i);
        rc = arena_add(t, &L->arena_cap, s.ptr, (size_t)s.len, &t->merge[i]);
        if (rc < 0) return rc;
    }
    /* Lower rank wins: insert from the last so that a duplicate keeps its first (best) rank. */
    for (uint32_t i = t->n_merges; i-- > 0;) strmap_put(&t->merge_map, t, t->merge, i);
    return 0;
}

/* A special id: absent -> def (dropped when out of range); present -> must be in range or < 0. */
static int load_special_id(struct loader *L, const char *key, int32_t def, int32_t *out)
{
    int64_t v;
    int rc = pi_gguf_get_int(L->g, key, &v);
    if (rc == -PI_ERR_NOTFOUND) {
        *out = def >= 0 && (uint32_t)def < L->t->n_vocab ? def : -1;
        return 0;
    }
    if (rc < 0 && rc != -PI_ERR_RANGE) return fail(L, "%s is not an integer", key);
    if (rc == -PI_ERR_RANGE) return fail(L, "%s does not fit in 64 bits (vocabulary of %u)", key, L->t->n_vocab);
    if (v >= (int64_t)L->t->n_vocab)
        return fail(L, "%s = %lld is out of range (vocabulary of %u)", key, (long long)v, L->t->n_vocab);
    *out = v < 0 ? -1 : (int32_t)v;
    return 0;
}

static int load_flag(struct loader *L, const char *key, bool def, bool *out)
{
    int rc = pi_gguf_get_bool(L->g, key, out);
    if (rc == -PI_ERR_NOTFOUND) {
        *out = def;
        return 0;
    }
    return rc < 0 ? fail(L, "%s is not a bool", key) : 0;
}

static int load_specials(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    bool spm = t->kind == PI_TOKENIZER_SPM, wpm = t->kind == PI_TOKENIZER_WPM;
    int rc;
    /* Defaults as llama.cpp's loader: SentencePiece <unk>=0 <s>=1 </s>=2; GPT-2 uses 11 for both;
     * BERT [UNK]=100 [CLS]=101 (its BOS) [SEP]=102 and no EOS. */
    if ((rc = load_special_id(L, "tokenizer.ggml.bos_token_id", spm ? 1 : wpm ? 101 : 11, &t->bos)) < 0 ||
        (rc = load_special_id(L, "tokenizer.ggml.eos_token_id", spm ? 2 : wpm ? -1 : 11, &t->eos)) < 0 ||
        (rc = load_special_id(L, "tokenizer.ggml.unknown_token_id", spm ? 0 : wpm ? 100 : -1, &t->unk)) < 0 ||
        (rc = wpm ? load_special_id(L, "tokenizer.ggml.cls_token_id", t->bos, &t->bos) : 0) < 0 ||
        (rc = load_special_id(L, "tokenizer.ggml.seperator_token_id", wpm ? 102 : -1, &t->sep)) < 0 ||
        (rc = load_special_id(L, "tokenizer.ggml.padding_token_id", -1, &t->pad)) < 0 ||
        (rc = load_special_id(L, "tokenizer.ggml.eot_token_id", -1, &t->eot)) < 0 ||
        (rc = load_special_id(L, "tokenizer.ggml.eom_token_id", -1, &t->eom)) < 0)
        return rc;
    /* Without the key, llama.cpp adds BOS for SentencePiece and the llama3 BPE family only. */
    if ((rc = load_flag(L, "tokenizer.ggml.add_bos_token", spm || wpm || t->ignore_merges, &t->add_bos)) < 0 ||
        (rc = load_flag(L, "tokenizer.ggml.add_eos_token", false, &t->add_eos)) < 0 ||
        (rc = load_flag(L, "tokenizer.ggml.add_space_prefix", spm, &t->add_space_prefix)) < 0)
        return rc;
    /* End-of-generation tokens (forced to control type, as llama.cpp does). */
    for (size_t k = 0; k < PI_ARRAY_LEN(eog_texts); k++) {
        int32_t id = pi_tok_find(t, eog_texts[k], strlen(eog_texts[k]));
        if (id < 0) continue;
        t->eog[id] = 1;
        t->type[id] = PI_TOKEN_CONTROL;
    }
    if (t->eos >= 0) t->eog[t->eos] = 1;
    if (t->eot >= 0) t->eog[t->eot] = 1;
    if (t->eom >= 0) t->eog[t->eom] = 1;
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The output bytes of one token (see pi_token_piece), appended to the arena. */
static int make_piece(struct loader *L, uint32_t id)
{
    pi_tokenizer_t *t = L->t;
    char *buf = L->scratch;
    size_t n = 0;
    const char *s = pi_tstr_ptr(t, t->text[id]);
    size_t len = t->text[id].len;
    switch (t->type[id]) {
    case PI_TOKEN_USER_DEFINED: /* as written (copied first: the arena may move while growing) */
        memcpy(buf, s, n = len);
        break;
    case PI_TOKEN_BYTE: {
        int hi = len == 6 ? hex_digit(s[3]) : -1, lo = len == 6 ? hex_digit(s[4]) : -1;
        if (hi >= 0 && lo >= 0 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') buf[n++] = (char)(hi << 4 | lo);
        else memcpy(buf, s, n = len); /* a byte token not spelt <0xNN>: keep its text */
        break;
    }
    case PI_TOKEN_NORMAL:
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t k = pi_utf8_decode((const unsigned char *)s + i, len - i, &cp);
            if (t->kind != PI_TOKENIZER_BPE) { /* SentencePiece and WordPiece: "▁" is a space */
                if (cp == 0x2581) buf[n++] = ' ';
                else memcpy(buf + n, s + i, k), n += k;
            } else {
                int b = pi_bpe_cp_to_byte(cp);
                if (b >= 0) buf[n++] = (char)b;
                else memcpy(buf + n, s + i, k), n += k; /* not byte-level text: as written */
            }
            i += k;
        }
        break;
    default: /* control, unknown, unused, undefined: nothing in output text */
        break;
    }
    return arena_add(t, &L->arena_cap, buf, n, &t->piece[id]);
}

/* Map the vocabulary, the byte tokens and the special-token partition tables. */
static int build_index(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    if (strmap_init(&t->tok_map, t->n_vocab) < 0 || strmap_init(&t->special_map, 64) < 0) return -PI_ERR_NOMEM;
    t->spm_word_split = true;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        const char *s = pi_tstr_ptr(t, t->text[i]);
        strmap_put(&t->tok_map, t, t->text, i);
        for (uint32_t j = 1; j + 3 <= t->text[i].len; j++) /* a "▁" after something other than "▁" */
            if (memcmp(s + j, "\xe2\x96\x81", 3) == 0 && (j < 3 || memcmp(s + j - 3, "\xe2\x96\x81", 3) != 0))
                t->spm_word_split = false;
    }
    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof(hex), "<0x%02X>", b);
        t->byte_tok[b] = pi_tok_find(t, hex, 6);
        if (t->byte_tok[b] < 0) {
            char one = (char)b;
            t->byte_tok[b] = pi_tok_find(t, &one, 1);
        }
    }
    return 0;
}

static int cmp_u32_desc(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int build_specials(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    uint32_t n = 0, counts[256] = {0};
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        uint8_t ty = t->type[i];
        if ((ty == PI_TOKEN_CONTROL || ty == PI_TOKEN_USER_DEFINED || ty == PI_TOKEN_UNKNOWN) && t->text[i].len) {
            counts[(unsigned char)pi_tstr_ptr(t, t->text[i])[0]]++;
            n++;
        }
    }
    strmap_free(&t->special_map);
    if (strmap_init(&t->special_map, n) < 0) return -PI_ERR_NOMEM;
    t->special_lens = calloc(n ? n : 1, sizeof(*t->special_lens));
    if (!t->special_lens) return -PI_ERR_NOMEM;
    uint32_t fill[256];
    t->special_first[0] = 0;
    for (int b = 0; b < 256; b++) t->special_first[b + 1] = t->special_first[b] + counts[b];
    memcpy(fill, t->special_first, sizeof(fill));
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        uint8_t ty = t->type[i];
        if (!((ty == PI_TOKEN_CONTROL || ty == PI_TOKEN_USER_DEFINED || ty == PI_TOKEN_UNKNOWN) && t->text[i].len)) continue;
        strmap_put(&t->special_map, t, t->text, i);
        t->special_lens[fill[(unsigned char)pi_tstr_ptr(t, t->text[i])[0]]++] = t->text[i].len;
        t->max_special = PI_MAX(t->max_special, t->text[i].len);
    }
    /* Per bucket: distinct lengths, longest first (duplicates collapse to 0 and are skipped). */
    for (int b = 0; b < 256; b++) {
        uint32_t *v = t->special_lens + t->special_first[b], m = counts[b];
        qsort(v, m, sizeof(*v), cmp_u32_desc);
        uint32_t w = 0;
        for (uint32_t k = 0; k < m; k++)
            if (w == 0 || v[k] != v[w - 1]) v[w++] = v[k];
        for (uint32_t k = w; k < m; k++) v[k] = 0;
        t->special_distinct[b] = w;
    }
    return 0;
}

/* True when the NUL-free string s[0..n), lowercased, contains needle. */
static bool name_has(struct pi_gguf_str s, const char *needle)
{
    size_t k = strlen(needle);
    for (uint64_t i = 0; i + k <= s.len; i++) {
        size_t j = 0;
        while (j < k && (s.ptr[i + j] >= 'A' && s.ptr[i + j] <= 'Z' ? s.ptr[i + j] + 32 : s.ptr[i + j]) == needle[j]) j++;
        if (j == k) return true;
    }
    return false;
}

static void strip_text(pi_tokenizer_t *t, const char *text, uint8_t bits, bool on)
{
    int32_t id = pi_tok_find(t, text, strlen(text));
    if (id >= 0) t->strip[id] = on ? (uint8_t)(t->strip[id] | bits) : (uint8_t)(t->strip[id] & ~bits);
}

/* llama.cpp keys these on names, not on anything in the vocabulary (llama_vocab::impl::load):
 * jina-v2 pre-tokenizers and nomic/jina BERTs strip blanks before <mask>; a model whose
 * general.name contains "phi-3"/"phi3" strips blanks after every special token but <unk>, <s> and
 * <|endoftext|> ("</s>" included); "modern-bert" strips before [MASK]. */
static void set_strip_rules(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    struct pi_gguf_str name = {"", 0}, arch = {"", 0}, pre = {t->pre_name, strlen(t->pre_name)};
    (void)pi_gguf_get_str(L->g, "general.name", &name);
    (void)pi_gguf_get_str(L->g, "general.architecture", &arch);
    if (name_has(pre, "jina-v2-de") || name_has(pre, "jina-v2-es") || name_has(pre, "jina-v2-code") ||
        name_has(arch, "nomic-bert-moe") || name_has(arch, "jina-bert-v3")) {
        strip_text(t, "<mask>", PI_TOK_LSTRIP, true);
    } else if (name_has(name, "phi-3") || name_has(name, "phi3")) {
        for (uint32_t i = 0; i < t->n_vocab; i++)
            if (t->type[i] == PI_TOKEN_CONTROL || t->type[i] == PI_TOKEN_USER_DEFINED || t->type[i] == PI_TOKEN_UNKNOWN)
                t->strip[i] |= PI_TOK_RSTRIP;
        strip_text(t, "</s>", PI_TOK_RSTRIP, true);
        strip_text(t, "<unk>", PI_TOK_RSTRIP, false);
        strip_text(t, "<s>", PI_TOK_RSTRIP, false);
        strip_text(t, "<|endoftext|>", PI_TOK_RSTRIP, false);
    } else if (name_has(name, "modern-bert")) {
        strip_text(t, "[MASK]", PI_TOK_LSTRIP, true);
    }
}

static int load_model_kind(struct loader *L)
{
    pi_tokenizer_t *t = L->t;
    struct pi_gguf_str s;
    if (pi_gguf_get_str(L->g, "tokenizer.ggml.model", &s) < 0) return fail(L, "tokenizer.ggml.model missing");
    if (pi_gguf_str_has_nul(s)) return fail(L, "tokenizer.ggml.model holds a NUL byte");
    if (pi_gguf_str_eq(s, "llama")) t->kind = PI_TOKENIZER_SPM;
    else if (pi_gguf_str_eq(s, "gpt2")) t->kind = PI_TOKENIZER_BPE;
    else if (pi_gguf_str_eq(s, "bert")) t->kind = PI_TOKENIZER_WPM;
    else return fail(L, "tokenizer.ggml.model \"%.*s\" is not supported (llama, gpt2, bert)", (int)PI_MIN(s.len, (uint64_t)40), s.ptr);
    snprintf(t->pre_name, sizeof(t->pre_name), "default");
    int rc = pi_gguf_get_str(L->g, "tokenizer.ggml.pre", &s);
    if (rc == 0) {
        if (s.len >= sizeof(t->pre_name)) return fail(L, "tokenizer.ggml.pre is too long");
        if (pi_gguf_str_has_nul(s)) return fail(L, "tokenizer.ggml.pre holds a NUL byte");
        memcpy(t->pre_name, s.ptr, s.len);
        t->pre_name[s.len] = 0;
    } else if (rc != -PI_ERR_NOTFOUND) {
        return fail(L, "tokenizer.ggml.pre is not a string");
    }
    if (t->kind == PI_TOKENIZER_BPE && !pi_pre_lookup(t->pre_name, t->passes, &t->ignore_merges))
        return fail(L, "unknown pre-tokenizer \"%s\" (tokenizer.ggml.pre)", t->pre_name);
    if (pi_gguf_get_str(L->g, "tokenizer.chat_template", &s) == 0) {
        if (s.len > (1u << 20)) return fail(L, "tokenizer.chat_template is too long");
        if (pi_gguf_str_has_nul(s)) return fail(L, "tokenizer.chat_template holds a NUL byte");
        t->chat_template = malloc(s.len + 1);
        if (!t->chat_template) return -PI_ERR_NOMEM;
        memcpy(t->chat_template, s.ptr, s.len);
        t->chat_template[s.len] = 0;
    }
    return 0;
}

pi_tokenizer_t *pi_tokenizer_new(const pi_gguf_t *g, char *err, size_t errlen)
{
    struct loader L = {.g = g, .err = err, .errlen = errlen};
    pi_tokenizer_t *t = calloc(1, sizeof(*t));
    int rc;
    if (err && errlen) err[0] = 0;
    if (!t) goto nomem;
    t->hash_seed = hash_seed(t);
    L.t = t;
    if ((rc = load_model_kind(&L)) < 0 || (rc = load_tokens(&L)) < 0) goto err;
    if (t->kind == PI_TOKENIZER_BPE && (rc = load_merges(&L)) < 0) goto err;
    if ((rc = build_index(&L)) < 0 || (rc = load_specials(&L)) < 0 || (rc = build_specials(&L)) < 0) goto err;
    set_strip_rules(&L);
    L.scratch = malloc(MAX_TOKEN_BYTES + 16);
    if (!L.scratch) goto nomem;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        if ((rc = make_piece(&L, i)) < 0) goto err;
        t->max_piece = PI_MAX(t->max_piece, t->piece[i].len);
    }
    free(L.scratch);
    return t;
err:
    free(L.scratch);
    L.scratch = NULL;
    if (rc == -PI_ERR_FORMAT) { /* already logged with its reason by fail() */
        pi_tokenizer_destroy(&t);
        return NULL;
    }
    if (rc == -PI_ERR_RANGE) { /* the string arena would pass 4 GiB */
        fail(&L, "the vocabulary's strings exceed 4 GiB");
        pi_tokenizer_destroy(&t);
        return NULL;
    }
nomem:
    free(L.scratch);
    pi_error("tokenizer: out of memory while loading the vocabulary");
    if (err && errlen) snprintf(err, errlen, "out of memory while loading the vocabulary");
    pi_tokenizer_destroy(&t);
    return NULL;
}

void pi_tokenizer_destroy(pi_tokenizer_t **tp)
{
    pi_tokenizer_t *t = tp ? *tp : NULL;
    if (!t) return;
    strmap_free(&t->tok_map);
    strmap_free(&t->merge_map);
    strmap_free(&t->special_map);
    free(t->special_lens);
    free(t->arena);
    free(t->text);
    free(t->piece);
    free(t->score);
    free(t->type);
    free(t->eog);
    free(t->strip);
    free(t->merge);
    free(t->chat_template);
    free(t);
    *tp = NULL;
}

/* ---- tokenizing ---- */

/* Scratch of the special-token scan of one request. */
struct special_scan {
    uint32_t *h;           /* [max_special + 1]: h[l] = hash state after the l bytes at the position */
    uint64_t work, budget; /* bytes hashed plus probes so far, and the limit (pi_tok_work_budget) */
};

/* The longest special token allowed here that text[pos..len) starts with, or -1. The hashes of all
 * the prefixes are computed in one pass, so a position costs the bucket's longest length plus one
 * probe per distinct length, not the sum of the lengths (which a vocabulary of specials "yx",
 * "yxx", "yxxx", ... made quadratic: 100 KB of 'y' took a minute with 1024 of them). */
static int32_t match_special(const pi_tokenizer_t *t, const char *text, size_t pos, size_t len, bool parse_special,
                             struct special_scan *sc)
{
    unsigned char b = (unsigned char)text[pos];
    uint32_t k0 = t->special_first[b], k1 = k0 + t->special_distinct[b];
    size_t max = PI_MIN((size_t)t->special_lens[k0], len - pos); /* lengths are sorted longest first */
    uint32_t h = pi_tok_hash_init(t);
    for (size_t l = 1; l <= max; l++) sc->h[l] = h = pi_tok_hash_step(h, (unsigned char)text[pos + l - 1]);
    sc->work += max + (k1 - k0);
    for (uint32_t k = k0; k < k1; k++) {
        uint32_t l = t->special_lens[k];
        if (l == 0 || l > len - pos) continue;
        int64_t id = pi_strmap_find_hashed(&t->special_map, t, t->text, text + pos, l, pi_tok_hash_final(t, sc->h[l]));
        if (id < 0) continue;
        if (!parse_special && t->type[id] != PI_TOKEN_USER_DEFINED) continue;
        return (int32_t)id;
    }
    return -1;
}

/* isspace() of the C locale, as llama.cpp strips with. */
static bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static int encode_raw(const pi_tokenizer_t *t, const char *s, size_t n, bool after_special, uint64_t *left,
                      struct pi_ivec *out)
{
    if (t->kind == PI_TOKENIZER_SPM) return pi_spm_encode(t, s, n, t->add_space_prefix && after_special, left, out);
    if (t->kind == PI_TOKENIZER_WPM) return pi_wpm_encode(t, s, n, left, out);
    return pi_bpe_encode(t, s, n, left, out);
}

static int tokenize_vec(const pi_tokenizer_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
                        struct special_scan *sc, struct pi_ivec *out)
{
    int rc = 0;
    bool after_special = true; /* the space prefix goes before the first fragment too */
    size_t frag = 0;
    uint64_t left = pi_tok_work_budget(len); /* the fragments' encoding, over the whole request */
    if (add_bos && t->add_bos && t->bos >= 0 && (rc = pi_ivec_push(out, t->bos)) < 0) return rc;
    for (size_t pos = 0; pos < len;) {
        int32_t id = t->special_first[(unsigned char)text[pos]] == t->special_first[(unsigned char)text[pos] + 1]
                         ? -1 : match_special(t, text, pos, len, parse_special, sc);
        if (sc->work > sc->budget) return -PI_ERR_RANGE;
        if (id < 0) {
            pos++;
            continue;
        }
        size_t end = pos; /* of the raw text before the token */
        if (t->strip[id] & PI_TOK_LSTRIP)
            while (end > frag && is_space(text[end - 1])) end--;
        if (end > frag && (rc = encode_raw(t, text + frag, end - frag, after_special, &left, out)) < 0) return rc;
        if ((rc = pi_ivec_push(out, id)) < 0) return rc;
        after_special = true;
        pos += t->text[id].len;
        if (t->strip[id] & PI_TOK_RSTRIP)
            while (pos < len && is_space(text[pos])) pos++;
        frag = pos;
    }
    if (len > frag && (rc = encode_raw(t, text + frag, len - frag, after_special, &left, out)) < 0) return rc;
    if (add_bos && t->add_eos && t->eos >= 0 && (rc = pi_ivec_push(out, t->eos)) < 0) return rc;
    if (add_bos && t->kind == PI_TOKENIZER_WPM && t->sep >= 0 && (rc = pi_ivec_push(out, t->sep)) < 0) return rc;
    return 0;
}

int pi_tokenize(const pi_tokenizer_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
                int32_t *out, size_t cap, size_t *n_out)
{
    struct pi_ivec v = {0};
    int rc;
    PI_ASSERT(t && n_out && (text || len == 0) && (out || cap == 0));
    *n_out = 0;
    if (len > PI_TOKENIZE_MAX_BYTES) {
        pi_error("tokenize: text of %zu bytes exceeds the limit of %zu", len, PI_TOKENIZE_MAX_BYTES);
        return -PI_ERR_RANGE;
    }
    struct special_scan sc = {.budget = pi_tok_work_budget(len)};
    sc.h = malloc(((size_t)t->max_special + 1) * sizeof(*sc.h));
    if (!sc.h) {
        pi_error("tokenize: out of memory");
        return -PI_ERR_NOMEM;
    }
    rc = tokenize_vec(t, text, len, add_bos, parse_special, &sc, &v);
    free(sc.h);
    if (rc == -PI_ERR_RANGE) {
        pi_error("tokenize: %zu bytes of text exceed the work limit with this vocabulary", len);
    } else if (rc < 0) {
        pi_error("tokenize: %s", pi_err_str(rc));
    } else {
        *n_out = v.n;
        if (v.n > cap) rc = -PI_ERR_RANGE;
        else if (v.n) memcpy(out, v.v, v.n * sizeof(*out));
    }
    free(v.v);
    return rc;
}

/* ---- accessors ---- */

enum pi_tokenizer_kind pi_tokenizer_kind(const pi_tokenizer_t *t) { return t->kind; }
const char *pi_tokenizer_pre(const pi_tokenizer_t *t) { return t->pre_name; }
int32_t pi_tokenizer_n_vocab(const pi_tokenizer_t *t) { return (int32_t)t->n_vocab; }
int32_t pi_tokenizer_bos(const pi_tokenizer_t *t) { return t->bos; }
int32_t pi_tokenizer_eos(const pi_tokenizer_t *t) { return t->eos; }
const char *pi_tokenizer_chat_template(const pi_tokenizer_t *t) { return t->chat_template; }

bool pi_tokenizer_is_eog(const pi_tokenizer_t *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab && t->eog[id];
}

const char *pi_token_text(const pi_tokenizer_t *t, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->text[id].len;
    return pi_tstr_ptr(t, t->text[id]);
}

int pi_token_cstr(const pi_tokenizer_t *t, int32_t id, char *buf, size_t len)
{
    size_t n = 0;
    const char *p = pi_token_text(t, id, &n);
    if (len) buf[0] = '\0';
    if (!p) return 0;
    if (n >= len || memchr(p, '\0', n)) return -1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return 1;
}

const char *pi_token_piece(const pi_tokenizer_t *t, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->piece[id].len;
    return pi_tstr_ptr(t, t->piece[id]);
}

enum pi_token_type pi_token_type_of(const pi_tokenizer_t *t, int32_t id)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab) return PI_TOKEN_UNDEFINED;
    return (enum pi_token_type)t->type[id];
}

int pi_tokenize_alloc(const pi_tokenizer_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
                      int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    size_t need = 0;
    int rc = pi_tokenize(t, text, len, add_bos, parse_special, NULL, 0, &need);
    if (rc != 0 && rc != -PI_ERR_RANGE) return rc;
    int32_t *out = malloc((need ? need : 1) * sizeof *out);
    if (!out) return -PI_ERR_NOMEM;
    rc = pi_tokenize(t, text, len, add_bos, parse_special, out, need, n);
    if (rc != 0) {
        free(out);
        *n = 0;
        return rc;
    }
    *ids = out;
    return 0;
}
