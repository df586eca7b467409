/*
 * text/tok-wpm.c - WordPiece ("bert" vocabularies, embedding models such as BGE): text is
 * normalised and cut into words, then each word, written with a leading "▁", is covered greedily
 * by the longest vocabulary entries from its start; a word that cannot be covered is one <unk>.
 *
 * Rules as llama.cpp applies them (llm_tokenizer_wpm_session in src/llama-vocab.cpp): every code
 * point becomes the first code point of its NFD form (so accents fall off precomposed letters),
 * whitespace separates words, NUL/U+FFFD/control characters vanish, punctuation, ASCII symbols and
 * CJK ideographs are words of their own, everything else is lowercased and joins the word.
 *
 * Cost: per position of a word, one pass over at most the longest token's length computing the
 * map hashes of all prefixes incrementally (pi_tok_hash_step), then one probe per length:
 * O(n * max_token_len), with max_token_len capped at load (PI_WPM_MAX_TOKEN) and the probes counted
 * against the request's work budget (pi_tok_work_budget).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "text/tokenizer-impl.h"
#include "text/unicode.h"

/* The CJK ideograph blocks BERT splits one by one (its _is_chinese_char; 0x2B920 as in the HF
 * Rust code, as llama.cpp notes). */
static bool is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

struct wpm {
    const pi_tokenizer_t *t;
    char *word; /* "▁" + the current word */
    size_t n, cap;
    uint32_t *hash; /* [PI_WPM_MAX_TOKEN + 1] prefix hashes */
    uint64_t work, budget; /* prefixes probed so far, and the limit (pi_tok_work_budget) */
};

static int word_put(struct wpm *w, const char *s, size_t n)
{
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->n + n) cap *= 2;
        char *p = realloc(w->word, cap);
        if (!p) return -PI_ERR_NOMEM;
        w->word = p;
        w->cap = cap;
    }
    memcpy(w->word + w->n, s, n);
    w->n += n;
    return 0;
}

/* Longest token starting at w->word + i, or -1; its length in *len. */
static int32_t longest_at(struct wpm *w, size_t i, size_t *len)
{
    const pi_tokenizer_t *t = w->t;
    size_t max = PI_MIN((size_t)t->max_text, w->n - i);
    w->work += max;
    uint32_t h = pi_tok_hash_init(t); /* as pi_tok_hash, one prefix longer per step */
    for (size_t l = 1; l <= max; l++) {
        h = pi_tok_hash_step(h, (unsigned char)w->word[i + l - 1]);
        w->hash[l] = pi_tok_hash_final(t, h);
    }
    for (size_t l = max; l > 0; l--) {
        int64_t id = pi_strmap_find_hashed(&t->tok_map, t, t->text, w->word + i, l, w->hash[l]);
        if (id >= 0) {
            *len = l;
            return (int32_t)id;
        }
    }
    return -1;
}

/* Encode the collected word; an empty word (only "▁") is skipped. */
static int flush_word(struct wpm *w, struct pi_ivec *out)
{
    int rc = 0;
    if (w->n <= 3) goto done;
    size_t start = out->n;
    for (size_t i = 0, len; i < w->n; i += len) {
        int32_t id = longest_at(w, i, &len);
        if (w->work > w->budget) return -PI_ERR_RANGE;
        if (id < 0) {
            out->n = start; /* cannot cover the word: it is one <unk> */
            break;
        }
        if ((rc = pi_ivec_push(out, id)) < 0) return rc;
    }
    if (out->n == start && w->t->unk >= 0) rc = pi_ivec_push(out, w->t->unk);
done:
    w->n = 0;
    int rc2 = word_put(w, "\xe2\x96\x81", 3);
    return rc < 0 ? rc : rc2;
}

int pi_wpm_encode(const pi_tokenizer_t *t, const char *text, size_t len, uint64_t *left, struct pi_ivec *out)
{
    struct wpm w = {.t = t, .budget = *left};
    int rc = -PI_ERR_NOMEM;
    w.hash = malloc(((size_t)t->max_text + 1) * sizeof(*w.hash));
    if (!w.hash || (rc = word_put(&w, "\xe2\x96\x81", 3)) < 0) goto out;
    for (size_t i = 0; i < len && rc == 0;) {
        uint32_t cp;
        i += pi_utf8_decode((const unsigned char *)text + i, len - i, &cp);
        cp = pi_unicode_nfd_first(cp);
        uint16_t f = pi_unicode_flags(cp);
        char u[4];
        if (f & PI_UCLS_WHITESPACE) {
            rc = flush_word(&w, out);
        } else if (cp == 0 || cp == PI_UTF8_REPLACEMENT || (f & PI_UCLS_CONTROL)) {
            continue;
        } else if ((f & PI_UCLS_PUNCT) || (cp < 0x7F && (f & PI_UCLS_SYMBOL)) || is_cjk(cp)) {
            size_t k = pi_utf8_encode(pi_unicode_tolower(cp), u); /* a word of its own */
            if ((rc = flush_word(&w, out)) == 0 && (rc = word_put(&w, u, k)) == 0) rc = flush_word(&w, out);
        } else {
            size_t k = pi_utf8_encode(pi_unicode_tolower(cp), u);
            rc = word_put(&w, u, k);
        }
    }
    if (rc == 0) rc = flush_word(&w, out);
out:
    pi_tok_work_spent(left, w.budget, w.work);
    free(w.word);
    free(w.hash);
    return rc;
}
