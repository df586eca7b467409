/*
 * text/tokenizer-impl.h - what the tokenizer's files share (private to text/tokenizer.c, text/tok-spm.c,
 * text/tok-bpe.c, text/tok-wpm.c, text/tok-pre.c, text/tok-detok.c): the vocabulary, the string hash
 * maps, a growable id vector, and the entry points of each family.
 */
#ifndef PI_TEXT_TOKENIZER_IMPL_H
#define PI_TEXT_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "text/tokenizer.h"

/* A length-delimited string in the tokenizer's arena. */
struct pi_tstr {
    uint32_t off; /* into pi_tokenizer.arena */
    uint32_t len;
};

/* Open-addressing hash map from strings (keys[i], in the arena) to their index i. Duplicate keys:
 * the highest index wins, as llama.cpp's token_to_id map keeps the last one inserted. */
struct pi_strmap {
    uint32_t *slot; /* index + 1, 0 = empty; (mask + 1) slots */
    uint32_t *hash; /* the slot's key hash */
    uint32_t mask;
};

/* Pre-tokenizer split passes, applied in order (see text/tok-pre.c for each one's regex). */
enum pi_pre_pass {
    PI_PRE_END = 0,
    PI_PRE_GPT2,           /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
    PI_PRE_LLAMA3,         /* llama3's regex, \p{N}{1,3}, real categories */
    PI_PRE_QWEN2,          /* llama3's regex with \p{N} single, collapsed categories */
    PI_PRE_PUNCT_ALL,      /* [\p{P}\$\+<=>\^~\|`]+ */
    PI_PRE_PUNCT_DEFAULT,  /* [\p{P}\$\+<=>\^~\|]+ */
    PI_PRE_DIGIT3,         /* [0-9][0-9][0-9] */
    PI_PRE_NUM1,           /* \p{N} */
    PI_PRE_NUMRUN,         /* \p{N}+ */
    PI_PRE_CRLF,           /* [\r\n] */
    PI_PRE_WS_LETTERS,     /* \s?\p{L}+ */
    PI_PRE_WS_PUNCTS,      /* \s?\p{P}+ */
    PI_PRE_CJK,            /* [一-龥ࠀ-一가-퟿]+ */
    PI_PRE_DSLLM_LETTERS,  /* \s?[A-Za-zµÀ-Ö...]+ (DeepSeek-LLM's letter class) */
    PI_PRE_DSLLM_PUNCTS,   /* \s?[!-/:-~！-／：-～‘-‟　-。]+ */
    PI_PRE_WS_END,         /* \s+$ */
};

#define PI_PRE_MAX_PASSES 8

/* Whitespace llama.cpp removes around some special tokens, chosen by model name (see
 * set_strip_rules in text/tokenizer.c): before the token (LSTRIP) or after it (RSTRIP). */
#define PI_TOK_LSTRIP 1
#define PI_TOK_RSTRIP 2

struct pi_tokenizer {
    enum pi_tokenizer_kind kind;
    char pre_name[48];
    enum pi_pre_pass passes[PI_PRE_MAX_PASSES]; /* BPE only; PI_PRE_END-terminated */
    bool ignore_merges;     /* llama3: a word that is a token is emitted whole */
    bool add_space_prefix;  /* SPM: ' ' before the text and after each special token */
    bool spm_word_split;    /* SPM: no token has "▁" after another character (text/tok-spm.c) */
    bool add_bos, add_eos;  /* the file's flags */

    uint32_t n_vocab;
    char *arena;            /* every string below */
    size_t arena_len;
    struct pi_tstr *text;   /* [n_vocab] vocabulary text */
    struct pi_tstr *piece;  /* [n_vocab] decoded output bytes */
    float *score;           /* [n_vocab] */
    uint8_t *type;          /* [n_vocab] enum pi_token_type */
    uint8_t *eog;           /* [n_vocab] 1 = ends generation */
    uint8_t *strip;         /* [n_vocab] PI_TOK_LSTRIP | PI_TOK_RSTRIP when matched as special */
    struct pi_strmap tok_map;

    uint32_t n_merges;
    struct pi_tstr *merge;  /* [n_merges] "left right" */
    struct pi_strmap merge_map;

    int32_t bos, eos, unk, pad;
    int32_t byte_tok[256];  /* SPM: id of <0xNN> (or the 1-byte token), -1 when none */
    uint32_t max_piece;     /* longest piece, bytes */
    uint32_t max_text;      /* longest vocabulary text, bytes */
    int32_t sep;            /* WordPiece: [SEP], appended with add_bos (-1: none) */

    /* Special tokens (control, user-defined, unknown) for the partition pass: a map of their
     * texts, and per first byte the distinct text lengths, longest first, so that finding the
     * longest special token at a position costs a few hash lookups. */
    struct pi_strmap special_map;
    uint32_t *special_lens;         /* bucket b: [special_first[b], special_first[b] + special_distinct[b]) */
    uint32_t special_first[257];
    uint32_t special_distinct[256]; /* distinct lengths in bucket b (the rest of its slots are 0) */
    uint32_t max_special;           /* longest special token, bytes */
    int32_t eot, eom;

    char *chat_template;    /* NUL-terminated copy, or NULL */
    uint32_t hash_seed;     /* random per tokenizer (see pi_tok_hash) */
};

/* A growable vector of ids. */
struct pi_ivec {
    int32_t *v;
    size_t n, cap;
};
int pi_ivec_push(struct pi_ivec *v, int32_t id); /* 0 or -PI_ERR_NOMEM */

static inline const char *pi_tstr_ptr(const pi_tokenizer_t *t, struct pi_tstr s) { return t->arena + s.off; }

/* String hash of the maps: FNV-1a from a per-tokenizer random basis, then a murmur3 finaliser.
 * Seeded because the keys come from an untrusted file: with a fixed hash, a vocabulary could be
 * built whose strings all fall into one cluster of the open-addressing table, making loading and
 * every lookup linear in the vocabulary (quadratic overall). Lookups give the same answers for any
 * seed; only the table layout changes. Incremental form for prefix hashing (text/tok-wpm.c):
 * h = pi_tok_hash_init(t); h = pi_tok_hash_step(h, byte)...; pi_tok_hash_final(t, h). */
static inline uint32_t pi_tok_hash_init(const pi_tokenizer_t *t) { return 2166136261u ^ t->hash_seed; }
static inline uint32_t pi_tok_hash_step(uint32_t h, unsigned char c) { return (h ^ c) * 16777619u; }
static inline uint32_t pi_tok_hash_final(const pi_tokenizer_t *t, uint32_t h)
{
    h ^= t->hash_seed >> 7 | t->hash_seed << 25;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    return h ^ (h >> 16);
}
uint32_t pi_tok_hash(const pi_tokenizer_t *t, const char *s, size_t n);
/* Index of the key equal to s[0..n), or -1. */
int64_t pi_strmap_find(const struct pi_strmap *m, const pi_tokenizer_t *t, const struct pi_tstr *keys,
                       const char *s, size_t n);
/* Same with the key's pi_tok_hash() already known. */
int64_t pi_strmap_find_hashed(const struct pi_strmap *m, const pi_tokenizer_t *t, const struct pi_tstr *keys,
                              const char *s, size_t n, uint32_t h);
/* Token id of the text s[0..n), or -1. */
static inline int32_t pi_tok_find(const pi_tokenizer_t *t, const char *s, size_t n)
{
    return (int32_t)pi_strmap_find(&t->tok_map, t, t->text, s, n);
}

/* Merge state shared by both BPE flavours: symbols in a linked list over a byte buffer, and a
 * binary heap of candidate pairs (best first: highest score, then leftmost; BPE stores -rank). */
struct pi_tok_sym {
    int32_t prev, next; /* neighbours in the live list, -1 at the ends */
    uint32_t off, n;    /* bytes of the buffer; n = 0 once merged into the left neighbour */
};
struct pi_tok_pair {
    float score;
    int32_t left, right;
    uint32_t size; /* bytes of left + right when the pair was made (stale when it differs) */
};
struct pi_tok_heap {
    struct pi_tok_pair *v;
    size_t n, cap;
};
int pi_tok_heap_push(struct pi_tok_heap *h, struct pi_tok_pair p); /* 0 or -PI_ERR_NOMEM */
struct pi_tok_pair pi_tok_heap_pop(struct pi_tok_heap *h);     /* h->n > 0 */

/* Work budget of one request of len bytes, in bytes hashed or compared while merging (SentencePiece,
 * byte-level BPE) or in prefixes probed (WordPiece). Merging is O(n log n) in pairs, but each pair
 * costs its length: a hostile vocabulary whose tokens grow one byte at a time ("a", "aa", "aaa",
 * ...) makes a run of one character cost O(n * longest token), up to 65536 times the text. Real
 * vocabularies stay far below the budget (worst case measured on the fixtures' vocabularies with
 * 1 MiB runs of one character: 63 per byte, gpt-neox); beyond it the request fails with
 * -PI_ERR_RANGE instead of taking minutes. The special-token scan (text/tokenizer.c) has a budget
 * of the same size for its own work (at most 44 per byte measured: starcoder, text of '<'). */
#define PI_TOK_WORK_PER_BYTE 512u
#define PI_TOK_WORK_BASE ((uint64_t)1 << 22)
static inline uint64_t pi_tok_work_budget(size_t len) { return PI_TOK_WORK_BASE + (uint64_t)len * PI_TOK_WORK_PER_BYTE; }

/* The budget is the whole request's (pi_tokenize's text, not one fragment's): the encoders below
 * take what is left in *left and leave there what they did not use. Per fragment, the base would be
 * granted again for every run of text between two special tokens (a review had 16 MiB of 6000-byte
 * runs accepted after 21 s where the same text without separators was refused). */
static inline void pi_tok_work_spent(uint64_t *left, uint64_t budget, uint64_t work) { *left = work < budget ? budget - work : 0; }

/* SentencePiece: tokenize one raw-text fragment (the space prefix and "▁" escaping included), within
 * the request's work budget *left. */
int pi_spm_encode(const pi_tokenizer_t *t, const char *text, size_t len, bool space_prefix, uint64_t *left,
                  struct pi_ivec *out);

/* WordPiece: normalise one raw-text fragment, cut it into words, cover each greedily (budget: *left). */
int pi_wpm_encode(const pi_tokenizer_t *t, const char *text, size_t len, uint64_t *left, struct pi_ivec *out);
#define PI_WPM_MAX_TOKEN 1024u /* longest WordPiece token accepted (bounds the work per byte) */

/* Byte-level BPE: pre-tokenize one raw-text fragment and encode each word. */
int pi_bpe_encode(const pi_tokenizer_t *t, const char *text, size_t len, uint64_t *left, struct pi_ivec *out);

/* Pre-tokenizer: split cps[0..n) by the passes; appends each word's length (in code points) to
 * *lens (a growable size_t vector). 0 or -PI_ERR_NOMEM. */
int pi_pre_split(const enum pi_pre_pass *passes, const uint32_t *cps, size_t n, size_t **lens, size_t *n_lens);
/* The passes for a tokenizer.ggml.pre name; false when the name is unknown. */
bool pi_pre_lookup(const char *name, enum pi_pre_pass passes[PI_PRE_MAX_PASSES], bool *ignore_merges);

/* The GPT-2 byte <-> code point map of byte-level BPE. */
uint32_t pi_bpe_byte_to_cp(uint8_t b);
/* Byte for code point cp, or -1 when cp is not in the map. */
int pi_bpe_cp_to_byte(uint32_t cp);

#endif
