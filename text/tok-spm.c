/*
 * text/tok-spm.c - SentencePiece-style BPE ("llama" vocabularies): the text is split into UTF-8
 * characters, then the adjacent pair whose concatenation is the vocabulary's best-scored token is
 * merged, again and again, until no pair is a token. What is left and not a token falls back to
 * its bytes <0xNN>.
 *
 * Rules as llama.cpp applies them (llm_tokenizer_spm in src/llama-vocab.cpp), which the vocab test
 * vectors pin down: ' ' is written "▁" (U+2581); a leading "▁" is added when asked; ties between
 * equal scores go to the leftmost pair; characters are cut by the lead byte's length alone, so
 * invalid UTF-8 becomes single bytes and then byte tokens.
 *
 * Cost: a binary heap of candidate pairs, O(n log n) for n characters; stale pairs (one side
 * already merged elsewhere) are recognised by their size and skipped.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "text/tokenizer-impl.h"
#include "text/unicode.h"

/* a goes before b: higher score first, then the leftmost. */
static inline bool pair_before(const struct pi_tok_pair *a, const struct pi_tok_pair *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

int pi_tok_heap_push(struct pi_tok_heap *h, struct pi_tok_pair p)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        struct pi_tok_pair *v = realloc(h->v, cap * sizeof(*v));
        if (!v) return -PI_ERR_NOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && pair_before(&p, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = p;
    return 0;
}

struct pi_tok_pair pi_tok_heap_pop(struct pi_tok_heap *h)
{
    struct pi_tok_pair top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pair_before(&h->v[c + 1], &h->v[c])) c++;
        if (!pair_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

struct spm {
    const pi_tokenizer_t *t;
    const char *text; /* escaped */
    struct pi_tok_sym *sym;
    struct pi_tok_heap heap;
    uint64_t work, budget; /* bytes hashed so far, and the limit (pi_tok_work_budget) */
};

static int try_pair(struct spm *s, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return 0;
    uint32_t size = s->sym[left].n + s->sym[right].n;
    if (size > s->t->max_text) return 0; /* no token is that long: skip hashing it */
    if ((s->work += size) > s->budget) return -PI_ERR_RANGE;
    int32_t id = pi_tok_find(s->t, s->text + s->sym[left].off, size);
    if (id < 0) return 0;
    return pi_tok_heap_push(&s->heap, (struct pi_tok_pair){s->t->score[id], left, right, size});
}

/* Emit one final symbol: its token, or its bytes. */
static int emit(struct spm *s, const struct pi_tok_sym *y, struct pi_ivec *out)
{
    const pi_tokenizer_t *t = s->t;
    int32_t id = pi_tok_find(t, s->text + y->off, y->n);
    if (id >= 0) return pi_ivec_push(out, id);
    for (uint32_t i = 0; i < y->n; i++) {
        id = t->byte_tok[(unsigned char)s->text[y->off + i]];
        if (id < 0) id = t->unk;
        if (id < 0) return -PI_ERR_UNSUPPORTED; /* no byte fallback and no <unk>: cannot encode */
        int rc = pi_ivec_push(out, id);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Escape: optional leading "▁", and every ' ' as "▁". Returns the buffer (caller frees). */
static char *escape(const char *text, size_t len, bool space_prefix, size_t *out_len)
{
    char *buf = malloc(3 * len + 3);
    size_t n = 0;
    if (!buf) return NULL;
    if (space_prefix) memcpy(buf, "\xe2\x96\x81", 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') memcpy(buf + n, "\xe2\x96\x81", 3), n += 3;
        else buf[n++] = text[i];
    }
    *out_len = n;
    return buf;
}

static int merge_all(struct spm *s)
{
    int rc;
    while (s->heap.n) {
        struct pi_tok_pair p = pi_tok_heap_pop(&s->heap);
        struct pi_tok_sym *l = &s->sym[p.left], *r = &s->sym[p.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = p.left;
        if ((rc = try_pair(s, l->prev, p.left)) < 0 || (rc = try_pair(s, p.left, l->next)) < 0) return rc;
    }
    return 0;
}

/* Whether a word boundary falls between symbols k-1 and k: k is "▁" and k-1 is not (see below). */
static bool word_start(const struct spm *s, size_t k)
{
    const struct pi_tok_sym *a = &s->sym[k - 1], *b = &s->sym[k];
    return b->n == 3 && memcmp(s->text + b->off, "\xe2\x96\x81", 3) == 0 &&
           !(a->n == 3 && memcmp(s->text + a->off, "\xe2\x96\x81", 3) == 0);
}

/* Merge and emit symbols [a, b) as one independent sequence. */
static int encode_run(struct spm *s, size_t a, size_t b, struct pi_ivec *out)
{
    int rc;
    s->sym[a].prev = -1;
    s->sym[b - 1].next = -1;
    s->heap.n = 0;
    for (size_t i = a + 1; i < b; i++)
        if ((rc = try_pair(s, (int32_t)i - 1, (int32_t)i)) < 0) return rc;
    if ((rc = merge_all(s)) < 0) return rc;
    for (int32_t i = (int32_t)a; i >= 0; i = s->sym[i].next)
        if ((rc = emit(s, &s->sym[i], out)) < 0) return rc;
    return 0;
}

/* When no token has "▁" right after another character (t->spm_word_split, checked at load), no
 * merge can join a symbol to a following "▁" that starts a word, so each word can be merged on its
 * own: the same result as one pass over the whole text, with small heaps instead of one huge one. */
int pi_spm_encode(const pi_tokenizer_t *t, const char *text, size_t len, bool space_prefix, uint64_t *left,
                  struct pi_ivec *out)
{
    struct spm s = {.t = t, .budget = *left};
    size_t n = 0, elen;
    int rc = -PI_ERR_NOMEM;
    char *buf = escape(text, len, space_prefix, &elen);
    if (!buf) return rc;
    s.text = buf;
    s.sym = malloc((elen ? elen : 1) * sizeof(*s.sym));
    if (!s.sym) goto out;
    for (size_t off = 0; off < elen; n++) {
        size_t k = PI_MIN(pi_utf8_lead_len((unsigned char)buf[off]), elen - off);
        s.sym[n] = (struct pi_tok_sym){(int32_t)n - 1, (int32_t)n + 1, (uint32_t)off, (uint32_t)k};
        off += k;
    }
    rc = 0;
    for (size_t a = 0, b; rc == 0 && a < n; a = b) {
        for (b = a + 1; b < n && !(t->spm_word_split && word_start(&s, b));) b++;
        rc = encode_run(&s, a, b, out);
    }
out:
    pi_tok_work_spent(left, s.budget, s.work);
    free(s.heap.v);
    free(s.sym);
    free(buf);
    return rc;
}
