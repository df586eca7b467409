/*
 * text/tok-bpe.c - byte-level BPE ("gpt2" vocabularies): the pre-tokenizer (text/tok-pre.c) splits
 * the text into words; each word's UTF-8 bytes are spelt as code points by GPT-2's byte map
 * (printable bytes as themselves, the rest shifted to U+0100..), and within the word the adjacent
 * pair with the lowest merge rank is merged until no pair has a rank.
 *
 * Rules as llama.cpp applies them (llm_tokenizer_bpe_session in src/llama-vocab.cpp): invalid
 * UTF-8 in the text becomes U+FFFD before pre-tokenizing; ties between equal ranks go to the
 * leftmost pair; with ignore_merges (llama3) a word that is itself a token is emitted whole; a
 * final symbol that is not a token is emitted as its single-byte tokens where those exist.
 *
 * Cost: O(n log n) per word through the shared pair heap (text/tok-spm.c).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "text/tokenizer-impl.h"
#include "text/unicode.h"

/* GPT-2's bytes_to_unicode(): bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves; the
 * other 68 bytes take U+0100, U+0101, ... in byte order. */
static bool byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

/* The 68 others, in order: 0x00..0x20 (k 0..32), 0x7F..0xA0 (k 33..66), 0xAD (k 67). */
uint32_t pi_bpe_byte_to_cp(uint8_t b)
{
    if (byte_is_printable(b)) return b;
    if (b <= 0x20) return 0x100u + b;
    if (b <= 0xA0) return 0x100u + 33 + (b - 0x7Fu);
    return 0x100u + 67; /* 0xAD */
}

int pi_bpe_cp_to_byte(uint32_t cp)
{
    if (cp < 0x100) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t k = cp - 0x100;
    if (k <= 32) return (int)k;
    if (k <= 66) return (int)(0x7F + k - 33);
    return 0xAD;
}

struct bpe {
    const pi_tokenizer_t *t;
    char map[256][2]; /* UTF-8 of each byte's code point (all are 2 bytes or 1) */
    uint8_t map_len[256];
    char *word;       /* byte-mapped word */
    size_t word_cap;
    char *key;        /* "left right" scratch */
    size_t key_cap;
    struct pi_tok_sym *sym;
    size_t sym_cap;
    struct pi_tok_heap heap;
    uint64_t work, budget; /* bytes of pair keys built so far, and the limit (pi_tok_work_budget) */
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -PI_ERR_NOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int try_pair(struct bpe *b, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return 0;
    const struct pi_tok_sym *l = &b->sym[left], *r = &b->sym[right];
    size_t n = (size_t)l->n + 1 + r->n;
    if (n > 65536 + 1) return 0; /* longer than any merge can be */
    if ((b->work += n) > b->budget) return -PI_ERR_RANGE;
    int rc = grow((void **)&b->key, &b->key_cap, n, 1);
    if (rc < 0) return rc;
    memcpy(b->key, b->word + l->off, l->n);
    b->key[l->n] = ' ';
    memcpy(b->key + l->n + 1, b->word + r->off, r->n);
    int64_t rank = pi_strmap_find(&b->t->merge_map, b->t, b->t->merge, b->key, n);
    if (rank < 0) return 0;
    return pi_tok_heap_push(&b->heap, (struct pi_tok_pair){-(float)rank, left, right, l->n + r->n});
}

static int emit_symbol(struct bpe *b, const struct pi_tok_sym *y, struct pi_ivec *out)
{
    int32_t id = pi_tok_find(b->t, b->word + y->off, y->n);
    if (id >= 0) return pi_ivec_push(out, id);
    for (uint32_t i = 0; i < y->n; i++) {
        id = pi_tok_find(b->t, b->word + y->off + i, 1);
        int rc = id >= 0 ? pi_ivec_push(out, id) : 0;
        if (rc < 0) return rc;
    }
    return 0;
}

/* BPE over b->word[0..len). */
static int encode_word(struct bpe *b, size_t len, struct pi_ivec *out)
{
    int rc;
    size_t n = 0;
    if (b->t->ignore_merges) {
        int32_t id = pi_tok_find(b->t, b->word, len);
        if (id >= 0) return pi_ivec_push(out, id);
    }
    if ((rc = grow((void **)&b->sym, &b->sym_cap, len, sizeof(*b->sym))) < 0) return rc;
    for (size_t off = 0; off < len; n++) {
        size_t k = PI_MIN(pi_utf8_lead_len((unsigned char)b->word[off]), len - off);
        b->sym[n] = (struct pi_tok_sym){(int32_t)n - 1, (int32_t)n + 1, (uint32_t)off, (uint32_t)k};
        off += k;
    }
    b->sym[n - 1].next = -1;
    b->heap.n = 0;
    for (size_t i = 1; i < n; i++)
        if ((rc = try_pair(b, (int32_t)i - 1, (int32_t)i)) < 0) return rc;
    while (b->heap.n) {
        struct pi_tok_pair p = pi_tok_heap_pop(&b->heap);
        struct pi_tok_sym *l = &b->sym[p.left], *r = &b->sym[p.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) b->sym[r->next].prev = p.left;
        if ((rc = try_pair(b, l->prev, p.left)) < 0 || (rc = try_pair(b, p.left, l->next)) < 0) return rc;
    }
    for (int32_t i = 0; i >= 0; i = b->sym[i].next)
        if ((rc = emit_symbol(b, &b->sym[i], out)) < 0) return rc;
    return 0;
}

/* Spell cps[0..n) as byte-mapped UTF-8 into b->word; returns its length or a negative error. */
static int64_t map_word(struct bpe *b, const uint32_t *cps, size_t n)
{
    size_t len = 0;
    int rc = grow((void **)&b->word, &b->word_cap, 8 * n, 1);
    if (rc < 0) return rc;
    for (size_t i = 0; i < n; i++) {
        char u[4];
        size_t k = pi_utf8_encode(cps[i], u);
        for (size_t j = 0; j < k; j++) {
            unsigned char c = (unsigned char)u[j];
            memcpy(b->word + len, b->map[c], b->map_len[c]);
            len += b->map_len[c];
        }
    }
    return (int64_t)len;
}

static void bpe_free(struct bpe *b)
{
    free(b->word);
    free(b->key);
    free(b->sym);
    free(b->heap.v);
}

int pi_bpe_encode(const pi_tokenizer_t *t, const char *text, size_t len, uint64_t *left, struct pi_ivec *out)
{
    struct bpe b = {.t = t, .budget = *left};
    uint32_t *cps = malloc((len ? len : 1) * sizeof(*cps));
    size_t n = 0, *lens = NULL, n_lens = 0, at = 0;
    int rc = -PI_ERR_NOMEM;
    if (!cps) return rc;
    for (unsigned c = 0; c < 256; c++) b.map_len[c] = (uint8_t)pi_utf8_encode(pi_bpe_byte_to_cp((uint8_t)c), b.map[c]);
    for (size_t i = 0; i < len;) i += pi_utf8_decode((const unsigned char *)text + i, len - i, &cps[n++]);
    if ((rc = pi_pre_split(t->passes, cps, n, &lens, &n_lens)) < 0) goto out;
    for (size_t w = 0; w < n_lens; w++) {
        int64_t wl = map_word(&b, cps + at, lens[w]);
        at += lens[w];
        if (wl < 0) {
            rc = (int)wl;
            goto out;
        }
        if (wl > 0 && (rc = encode_word(&b, (size_t)wl, out)) < 0) goto out;
    }
    rc = 0;
out:
    pi_tok_work_spent(left, b.budget, b.work);
    bpe_free(&b);
    free(lens);
    free(cps);
    return rc;
}

int pi_pretokenize(const char *pre, const char *text, size_t len, size_t *lens, size_t cap, size_t *n_out)
{
    enum pi_pre_pass passes[PI_PRE_MAX_PASSES];
    bool ignore_merges;
    size_t n = 0, *words = NULL, n_words = 0;
    PI_ASSERT(pre && n_out && (text || len == 0) && (lens || cap == 0));
    *n_out = 0;
    if (!pi_pre_lookup(pre, passes, &ignore_merges)) return -PI_ERR_NOTFOUND;
    if (len > PI_TOKENIZE_MAX_BYTES) return -PI_ERR_RANGE;
    uint32_t *cps = malloc((len ? len : 1) * sizeof(*cps));
    if (!cps) return -PI_ERR_NOMEM;
    for (size_t i = 0; i < len;) i += pi_utf8_decode((const unsigned char *)text + i, len - i, &cps[n++]);
    int rc = pi_pre_split(passes, cps, n, &words, &n_words);
    if (rc == 0) {
        *n_out = n_words;
        if (n_words > cap) rc = -PI_ERR_RANGE;
        else if (n_words) memcpy(lens, words, n_words * sizeof(*lens));
    }
    free(words);
    free(cps);
    return rc;
}
