/*
 * text/tok-pre.c - the pre-tokenizers of byte-level BPE vocabularies: split text (as code points)
 * into the words that BPE then encodes one by one.
 *
 * Each family is defined upstream by a list of regexes applied in turn, each splitting every piece
 * of the previous one at its matches (the matches and the gaps between them both become pieces).
 * The lists (llm_tokenizer_bpe in ggml-org/llama.cpp src/llama-vocab.cpp, keyed by
 * tokenizer.ggml.pre) are restated by enum pi_pre_pass in text/tokenizer-impl.h. Instead of a regex
 * engine, each regex is a hand-written matcher over code point classes (text/unicode.h), following
 * the semantics llama.cpp gets for it:
 *  - the GPT-2 and llama3 regexes run through llama.cpp's hand-written splitters, with real
 *    Unicode categories;
 *  - every other regex with \p{..} runs through std::regex over a "collapsed" text in which each
 *    non-ASCII code point is replaced by one marker for its class: whitespace, number,
 *    punctuation, and letter for everything else (symbols, marks and unassigned code points count
 *    as letters there!). collapsed_flags() reproduces that;
 *  - regexes with explicit code point ranges run over the real code points, non-ASCII whitespace
 *    being seen as U+000B.
 * Every matcher is linear in its piece, so splitting is O(n) per pass.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "text/tokenizer-impl.h"
#include "text/unicode.h"

#define OUT_OF_RANGE 0xFFFFFFFFu

struct lens {
    size_t *v;
    size_t n, cap;
};

static int push_len(struct lens *l, size_t len)
{
    if (len == 0) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v) return -PI_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = len;
    return 0;
}

/* ---- classes ---- */

typedef uint16_t (*flags_fn)(uint32_t cp);

static uint16_t real_flags(uint32_t cp) { return cp == OUT_OF_RANGE ? 0 : pi_unicode_flags(cp); }

/* Flags as std::regex sees the collapsed text: ASCII as is, other code points by one class. */
static uint16_t collapsed_flags(uint32_t cp)
{
    if (cp == OUT_OF_RANGE) return 0;
    uint16_t f = pi_unicode_flags(cp);
    if (cp < 128) return f;
    if (f & PI_UCLS_WHITESPACE) return PI_UCLS_WHITESPACE;
    if (f & PI_UCLS_NUMBER) return PI_UCLS_NUMBER;
    if (f & PI_UCLS_PUNCT) return PI_UCLS_PUNCT;
    return PI_UCLS_LETTER;
}

/* \s over real code points (non-ASCII whitespace having been replaced by U+000B). */
static bool w_space(uint32_t cp) { return (pi_unicode_flags(cp) & PI_UCLS_WHITESPACE) != 0; }

/* The ASCII characters std::regex's collapsed \p{P} stands for (llama.cpp's k_ucat_map). */
static bool ascii_p(uint32_t c)
{
    return (c >= 0x21 && c <= 0x23) || (c >= 0x25 && c <= 0x2A) || (c >= 0x2C && c <= 0x2F) || c == 0x3A ||
           c == 0x3B || c == 0x3F || c == 0x40 || (c >= 0x5B && c <= 0x5D) || c == 0x5F || c == 0x7B || c == 0x7D;
}

static bool c_punct(uint32_t cp) { return cp < 128 ? ascii_p(cp) : (collapsed_flags(cp) & PI_UCLS_PUNCT) != 0; }
static bool c_letter(uint32_t cp) { return (collapsed_flags(cp) & PI_UCLS_LETTER) != 0; }
static bool c_number(uint32_t cp) { return (collapsed_flags(cp) & PI_UCLS_NUMBER) != 0; }
static bool c_space(uint32_t cp) { return (collapsed_flags(cp) & PI_UCLS_WHITESPACE) != 0; }

/* [\p{P}\$\+<=>\^~\|`] (with_backtick) or [\p{P}\$\+<=>\^~\|]: all ASCII punctuation but maybe '`'. */
static bool punct_all(uint32_t cp, bool with_backtick)
{
    if (cp < 128)
        return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60 && (cp != 0x60 || with_backtick)) ||
               (cp >= 0x7B && cp <= 0x7E);
    return c_punct(cp);
}

/* [一-龥ࠀ-一가-퟿]: U+0800..U+9FA5 and U+AC00..U+D7FF, minus the whitespace inside them (U+1680,
 * U+2000.., U+3000, ...), which llama.cpp has replaced by U+000B before this regex sees it. */
static bool cjk(uint32_t cp) { return ((cp >= 0x0800 && cp <= 0x9FA5) || (cp >= 0xAC00 && cp <= 0xD7FF)) && !w_space(cp); }

static bool dsllm_punct(uint32_t cp)
{
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x7E) || (cp >= 0xFF01 && cp <= 0xFF0F) ||
           (cp >= 0xFF1A && cp <= 0xFF5E) || (cp >= 0x2018 && cp <= 0x201F) || cp == 0x3001 || cp == 0x3002;
    /* U+3000 is in the upstream range but never matches: it is whitespace, seen as U+000B */
}

static bool dsllm_letter(uint32_t cp) { return !w_space(cp) && pi_unicode_in_dsllm_letters(cp); }

/* ---- the GPT-2 and llama3 splitters (llama.cpp's unicode_regex_split_custom_*) ---- */

struct seg {
    const uint32_t *cps;
    size_t start, end, prev;
    flags_fn flags;
    struct lens *out;
};

static uint32_t cp_at(const struct seg *s, size_t i) { return i >= s->start && i < s->end ? s->cps[i] : OUT_OF_RANGE; }
static uint16_t fl_at(const struct seg *s, size_t i) { return s->flags(cp_at(s, i)); }

/* Close the current word at end; returns its length. */
static size_t add_word(struct seg *s, size_t end, int *rc)
{
    size_t len = end - s->prev;
    if (*rc == 0) *rc = push_len(s->out, len);
    s->prev = end;
    return len;
}

#define F_LNW (PI_UCLS_LETTER | PI_UCLS_NUMBER | PI_UCLS_WHITESPACE)

/* 's|'t|'re|'ve|'m|'ll|'d, case-insensitively when fold (llama3). Returns the length or 0. */
static size_t contraction(const struct seg *s, size_t pos, bool fold)
{
    if (cp_at(s, pos) != '\'' || pos + 1 >= s->end) return 0;
    uint32_t a = cp_at(s, pos + 1), b = pos + 2 < s->end ? cp_at(s, pos + 2) : 0;
    if (fold) {
        if (a >= 'A' && a <= 'Z') a += 32;
        if (b >= 'A' && b <= 'Z') b += 32;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* Whitespace at pos: \s+(?!\S) keeps the last blank for the next word, else \s+; no match: 1. */
static size_t ws_tail(const struct seg *s, size_t pos)
{
    size_t n = 0;
    while (fl_at(s, pos + n) & PI_UCLS_WHITESPACE) n++;
    if (n > 1 && cp_at(s, pos + n) != OUT_OF_RANGE) return pos + n - 1;
    if (n > 0) return pos + n;
    return pos + 1;
}

static int split_gpt2(struct seg *s)
{
    int rc = 0;
    for (size_t pos = s->start; pos < s->end;) {
        uint32_t cp = cp_at(s, pos);
        size_t k = contraction(s, pos, false);
        if (k) {
            pos += add_word(s, pos + k, &rc);
            continue;
        }
        uint16_t f2 = cp == ' ' ? fl_at(s, pos + 1) : fl_at(s, pos);
        uint16_t want = f2 & PI_UCLS_LETTER ? PI_UCLS_LETTER : f2 & PI_UCLS_NUMBER ? PI_UCLS_NUMBER : 0;
        if (want) { /* ?\p{L}+ | ?\p{N}+ */
            pos += cp == ' ';
            while (fl_at(s, pos) & want) pos++;
            add_word(s, pos, &rc);
            continue;
        }
        if (!(f2 & F_LNW) && f2) { /* ?[^\s\p{L}\p{N}]+ */
            pos += cp == ' ';
            for (uint16_t f = fl_at(s, pos); !(f & F_LNW) && f; f = fl_at(s, ++pos)) {}
            add_word(s, pos, &rc);
            continue;
        }
        pos = ws_tail(s, pos);
        add_word(s, pos, &rc);
    }
    return rc;
}

/* llama3: (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 *         \s*[\r\n]+|\s+(?!\S)|\s+ */
static int split_llama3(struct seg *s, size_t max_digits)
{
    int rc = 0;
    for (size_t pos = s->start; pos < s->end;) {
        uint32_t cp = cp_at(s, pos);
        uint16_t f = fl_at(s, pos);
        size_t k = contraction(s, pos, true);
        if (k) {
            pos += add_word(s, pos + k, &rc);
            continue;
        }
        if (!(cp == '\r' || cp == '\n' || (f & PI_UCLS_NUMBER)) && ((f & PI_UCLS_LETTER) || (fl_at(s, pos + 1) & PI_UCLS_LETTER))) {
            for (pos++; fl_at(s, pos) & PI_UCLS_LETTER;) pos++;
            add_word(s, pos, &rc);
            continue;
        }
        if (f & PI_UCLS_NUMBER) {
            for (size_t ini = pos; fl_at(s, pos) & PI_UCLS_NUMBER;) {
                if (++pos - ini >= max_digits) {
                    add_word(s, pos, &rc);
                    ini = pos;
                }
            }
            add_word(s, pos, &rc);
            continue;
        }
        uint16_t f2 = cp == ' ' ? fl_at(s, pos + 1) : f;
        if (!(f2 & F_LNW) && f) {
            pos += cp == ' ';
            while (!(f2 & F_LNW) && f2) f2 = fl_at(s, ++pos);
            for (uint32_t c = cp_at(s, pos); c == '\r' || c == '\n'; c = cp_at(s, ++pos)) {}
            add_word(s, pos, &rc);
            continue;
        }
        size_t n = 0, last_nl = 0;
        for (; fl_at(s, pos + n) & PI_UCLS_WHITESPACE; n++) {
            uint32_t c = cp_at(s, pos + n);
            if (c == '\r' || c == '\n') last_nl = pos + n + 1;
        }
        pos = last_nl ? last_nl : ws_tail(s, pos);
        add_word(s, pos, &rc);
    }
    return rc;
}

/* ---- regex-search style passes: matches and the gaps between them become pieces ---- */

/* Length of the match of pass p at pos (0: none). */
static size_t match_at(enum pi_pre_pass p, const uint32_t *c, size_t pos, size_t end)
{
    size_t i = pos;
    switch (p) {
    case PI_PRE_PUNCT_ALL:
    case PI_PRE_PUNCT_DEFAULT:
        while (i < end && punct_all(c[i], p == PI_PRE_PUNCT_ALL)) i++;
        break;
    case PI_PRE_DIGIT3:
        if (end - pos >= 3 && c[i] - '0' < 10 && c[i + 1] - '0' < 10 && c[i + 2] - '0' < 10) i += 3;
        break;
    case PI_PRE_NUM1:
        i += c_number(c[i]);
        break;
    case PI_PRE_NUMRUN:
        while (i < end && c_number(c[i])) i++;
        break;
    case PI_PRE_CRLF:
        i += c[i] == '\r' || c[i] == '\n';
        break;
    case PI_PRE_CJK:
        while (i < end && cjk(c[i])) i++;
        break;
    case PI_PRE_WS_LETTERS:
        if (c_space(c[i]) && i + 1 < end && c_letter(c[i + 1])) i++;
        while (i < end && c_letter(c[i])) i++;
        break;
    case PI_PRE_WS_PUNCTS:
        if (c_space(c[i]) && i + 1 < end && c_punct(c[i + 1])) i++;
        while (i < end && c_punct(c[i])) i++;
        break;
    case PI_PRE_DSLLM_LETTERS:
        if (w_space(c[i]) && i + 1 < end && dsllm_letter(c[i + 1])) i++;
        while (i < end && dsllm_letter(c[i])) i++;
        break;
    case PI_PRE_DSLLM_PUNCTS:
        if (w_space(c[i]) && i + 1 < end && dsllm_punct(c[i + 1])) i++;
        while (i < end && dsllm_punct(c[i])) i++;
        break;
    default:
        pi_assert_fail("not a search pass", __FILE__, __LINE__, __func__);
    }
    return i - pos;
}

static int split_search(enum pi_pre_pass p, const uint32_t *c, size_t start, size_t end, struct lens *out)
{
    size_t prev = start;
    int rc = 0;
    if (p == PI_PRE_WS_END) { /* \s+$: the trailing run of whitespace, if any */
        size_t k = end;
        while (k > start && w_space(c[k - 1])) k--;
        if ((rc = push_len(out, k - start)) < 0) return rc;
        return push_len(out, end - k);
    }
    for (size_t pos = start; pos < end;) {
        size_t m = match_at(p, c, pos, end);
        if (!m) {
            pos++;
            continue;
        }
        if ((rc = push_len(out, pos - prev)) < 0 || (rc = push_len(out, m)) < 0) return rc;
        pos += m;
        prev = pos;
    }
    return push_len(out, end - prev);
}

static int split_piece(enum pi_pre_pass p, const uint32_t *cps, size_t start, size_t end, struct lens *out)
{
    struct seg s = {cps, start, end, start, real_flags, out};
    switch (p) {
    case PI_PRE_GPT2:
        return split_gpt2(&s);
    case PI_PRE_LLAMA3:
        return split_llama3(&s, 3);
    case PI_PRE_QWEN2:
        s.flags = collapsed_flags;
        return split_llama3(&s, 1);
    default:
        return split_search(p, cps, start, end, out);
    }
}

int pi_pre_split(const enum pi_pre_pass *passes, const uint32_t *cps, size_t n, size_t **lens, size_t *n_lens)
{
    struct lens cur = {0}, next = {0};
    int rc = push_len(&cur, n);
    for (size_t k = 0; rc == 0 && k < PI_PRE_MAX_PASSES && passes[k] != PI_PRE_END; k++) {
        size_t at = 0;
        next.n = 0;
        for (size_t i = 0; rc == 0 && i < cur.n; i++) {
            rc = split_piece(passes[k], cps, at, at + cur.v[i], &next);
            at += cur.v[i];
        }
        struct lens tmp = cur;
        cur = next;
        next = tmp;
    }
    free(next.v);
    if (rc < 0) {
        free(cur.v);
        return rc;
    }
    *lens = cur.v;
    *n_lens = cur.n;
    return 0;
}

/* ---- names ---- */

struct pre_family {
    const char *names; /* '|'-separated tokenizer.ggml.pre values */
    bool ignore_merges;
    enum pi_pre_pass passes[PI_PRE_MAX_PASSES];
};

static const struct pre_family families[] = {
    {"llama3|llama-v3|llama-bpe|falcon3", true, {PI_PRE_LLAMA3}},
    {"dbrx|smaug-bpe", false, {PI_PRE_LLAMA3}},
    {"qwen2|deepseek-r1-qwen|stablelm2|hunyuan", false, {PI_PRE_QWEN2}},
    {"deepseek-llm", false,
     {PI_PRE_CRLF, PI_PRE_DSLLM_LETTERS, PI_PRE_DSLLM_PUNCTS, PI_PRE_WS_END, PI_PRE_CJK, PI_PRE_NUMRUN}},
    {"deepseek-coder", false, {PI_PRE_CRLF, PI_PRE_WS_LETTERS, PI_PRE_WS_PUNCTS, PI_PRE_CJK, PI_PRE_NUM1}},
    {"falcon", false, {PI_PRE_PUNCT_ALL, PI_PRE_GPT2, PI_PRE_DIGIT3}},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b", false, {PI_PRE_NUM1, PI_PRE_GPT2}},
    {"gpt-2|phi-2|mpt|olmo|jais|trillion|roberta-bpe|jina-es|jina-de|gigachat|jina-v1-en|jina-v2-es|"
     "jina-v2-de|jina-v2-code",
     false, {PI_PRE_GPT2}},
    {"default", false, {PI_PRE_PUNCT_DEFAULT, PI_PRE_GPT2, PI_PRE_NUMRUN, PI_PRE_DIGIT3}},
};

static bool name_in(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, '|');
        size_t k = e ? (size_t)(e - p) : strlen(p);
        if (k == n && memcmp(p, name, n) == 0) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

bool pi_pre_lookup(const char *name, enum pi_pre_pass passes[PI_PRE_MAX_PASSES], bool *ignore_merges)
{
    for (size_t i = 0; i < PI_ARRAY_LEN(families); i++) {
        if (!name_in(families[i].names, name)) continue;
        memcpy(passes, families[i].passes, sizeof(families[i].passes));
        *ignore_merges = families[i].ignore_merges;
        return true;
    }
    return false;
}
