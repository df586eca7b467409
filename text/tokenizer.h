/*
 * text/tokenizer.h - text <-> token ids for the vocabularies GGUF files carry, matching llama.cpp
 * id for id, and a streaming detokenizer that never emits broken UTF-8.
 *
 * Families (tokenizer.ggml.model):
 *   "llama" SentencePiece BPE: score-driven merges over code points, a space prefix, "▁" for ' ',
 *           byte fallback <0xNN> for text the vocabulary lacks (llama 1/2, mistral, phi-3, ...).
 *   "gpt2"  byte-level BPE: a pre-tokenizer splits text into words (tokenizer.ggml.pre picks the
 *           regex family: llama3, qwen2, gpt-2, falcon, mpt, starcoder, refact, deepseek-llm,
 *           deepseek-coder, command-r, ...), then ranked merges within each word.
 *   "bert"  WordPiece: accents dropped, lowercased, words covered greedily by the longest pieces.
 * A tokenizer is immutable after pi_tokenizer_new(): every function here may be called from several
 * threads at once on one tokenizer (each call allocates its own scratch). It copies what it needs
 * from the GGUF file, so the file may be closed afterwards.
 *
 * Work per request is O(n log n) in the text length, capped at PI_TOKENIZE_MAX_BYTES bytes and at a
 * fixed budget of work per byte (a hostile vocabulary cannot make a request take minutes); invalid
 * UTF-8 and NUL bytes are tokenized like llama.cpp does (byte fallback for SentencePiece, U+FFFD
 * for byte-level BPE), never a crash.
 */
#ifndef PI_TEXT_TOKENIZER_H
#define PI_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "model/gguf.h"

typedef struct pi_tokenizer pi_tokenizer_t;

/* Largest text one pi_tokenize() call accepts (bytes). */
#define PI_TOKENIZE_MAX_BYTES ((size_t)16 << 20)

/* Token types as stored in tokenizer.ggml.token_type (llama.cpp's numbering). */
enum pi_token_type {
    PI_TOKEN_UNDEFINED = 0,
    PI_TOKEN_NORMAL = 1,
    PI_TOKEN_UNKNOWN = 2,
    PI_TOKEN_CONTROL = 3,
    PI_TOKEN_USER_DEFINED = 4,
    PI_TOKEN_UNUSED = 5,
    PI_TOKEN_BYTE = 6,
};

enum pi_tokenizer_kind {
    PI_TOKENIZER_SPM = 1, /* "llama" */
    PI_TOKENIZER_BPE = 2, /* "gpt2" */
    PI_TOKENIZER_WPM = 3, /* "bert" (WordPiece, for embedding models) */
};

/* Build the tokenizer from g's tokenizer.* metadata, validating all of it (array types and lengths,
 * special ids in range, merges well-formed, a known pre-tokenizer). Returns NULL on failure with
 * one line in err (when not NULL), e.g. "tokenizer.ggml.scores has 100 entries, tokens 32000";
 * the failure is also logged. */
pi_tokenizer_t *pi_tokenizer_new(const pi_gguf_t *g, char *err, size_t errlen);

/* Free; accepts NULL and NULL-s the caller's pointer. */
void pi_tokenizer_destroy(pi_tokenizer_t **t);

/* Tokenize text[0..len) (any bytes; need not be NUL-terminated) into out[0..cap).
 * add_bos: prepend BOS when the file has one and does not say tokenizer.ggml.add_bos_token = false,
 *          and append EOS when the file says add_eos_token = true (llama.cpp's add_special).
 * parse_special: recognise control tokens ("<|im_end|>", "</s>", ...) written in the text; when
 *          false they are tokenized as plain text. User-defined tokens are recognised either way,
 *          as llama.cpp does.
 * Returns 0 with *n_out = the number of ids; -PI_ERR_RANGE when cap is too small (then *n_out is
 * the number needed and out holds nothing useful), len > PI_TOKENIZE_MAX_BYTES, or the text would
 * cost more than the work budget (text/tokenizer-impl.h: PI_TOK_WORK_PER_BYTE, only reached with
 * hostile vocabularies whose tokens grow a byte at a time); -PI_ERR_NOMEM;
 * -PI_ERR_UNSUPPORTED when a SentencePiece vocabulary has neither the byte token nor <unk> for
 * some text (it cannot be encoded).
 * out may be NULL when cap is 0 (to ask for the size). */
int pi_tokenize(const pi_tokenizer_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
                int32_t *out, size_t cap, size_t *n_out);

/* pi_tokenize into a buffer of the right size: *ids malloc'd (the caller frees it) with *n ids. 0, or
 * pi_tokenize's errors with *ids NULL and *n 0. */
int pi_tokenize_alloc(const pi_tokenizer_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
                      int32_t **ids, size_t *n);

/* Accessors (t not NULL); they never fail. */
enum pi_tokenizer_kind pi_tokenizer_kind(const pi_tokenizer_t *t);
/* The tokenizer.ggml.pre name ("default" when absent or for SentencePiece). Borrowed. */
const char *pi_tokenizer_pre(const pi_tokenizer_t *t);
int32_t pi_tokenizer_n_vocab(const pi_tokenizer_t *t);
/* Special ids, or -1 when the file has none. */
int32_t pi_tokenizer_bos(const pi_tokenizer_t *t);
int32_t pi_tokenizer_eos(const pi_tokenizer_t *t);
/* True for tokens that end a generation: EOS, EOT/EOM ids from the file, and control tokens
 * named like llama.cpp's end-of-generation list ("<|eot_id|>", "<|im_end|>", "<|end|>",
 * "<end_of_turn>", "<|endoftext|>", "<EOT>", ...). False for ids out of range. */
bool pi_tokenizer_is_eog(const pi_tokenizer_t *t, int32_t id);
/* The chat template from tokenizer.chat_template, NUL-terminated, or NULL when absent. Borrowed. */
const char *pi_tokenizer_chat_template(const pi_tokenizer_t *t);

/* The vocabulary's text of token id ("▁Hello", "Ġworld", "<0x0A>"), not NUL-terminated, with its
 * length in *len; NULL (and *len = 0) when id is out of range. Borrowed, lives as the tokenizer. */
const char *pi_token_text(const pi_tokenizer_t *t, int32_t id, size_t *len);
/* pi_token_text of id copied into buf (len bytes) as a C string: 1; 0 (buf "") when the model has no
 * such token (id out of range, e.g. -1 for a missing BOS); -1 (buf "") when its text does not fit or
 * holds a NUL byte, which no C string can carry. */
int pi_token_cstr(const pi_tokenizer_t *t, int32_t id, char *buf, size_t len);
/* The bytes token id stands for in output text: "▁" -> ' ' (SentencePiece), byte-level BPE
 * decoded, <0xNN> -> that one byte, control and unused tokens -> empty. May be an incomplete or
 * invalid UTF-8 sequence (byte tokens); use pi_detok for text meant for people. Not
 * NUL-terminated; NULL (and *len = 0) when id is out of range. Borrowed. */
const char *pi_token_piece(const pi_tokenizer_t *t, int32_t id, size_t *len);
/* Token id's type; PI_TOKEN_UNDEFINED when id is out of range. */
enum pi_token_type pi_token_type_of(const pi_tokenizer_t *t, int32_t id);

/* The pre-tokenizer alone, for tests and diagnostics: split text[0..len) into the words the
 * byte-level BPE family named pre ("llama3", "gpt-2", "qwen2", ... as in tokenizer.ggml.pre) encodes
 * separately. Invalid UTF-8 is read as U+FFFD first, as pi_tokenize does. Stores the words' lengths
 * in code points to lens[0..cap) and their number in *n_out. Returns 0, -PI_ERR_RANGE when cap is
 * too small (*n_out = the number needed) or len > PI_TOKENIZE_MAX_BYTES, -PI_ERR_NOTFOUND for an
 * unknown name, -PI_ERR_NOMEM. */
int pi_pretokenize(const char *pre, const char *text, size_t len, size_t *lens, size_t cap, size_t *n_out);

/* ---- streaming detokenizer ---- */
typedef struct pi_detok pi_detok_t;

/* A detokenizer for one output stream of t (t must outlive it). strip_leading_space: drop one ' '
 * at the very start of the output, as SentencePiece's decoder does for the space prefix it added
 * (use it when decoding a whole text from its first token; not for a continuation). NULL on OOM. */
pi_detok_t *pi_detok_new(const pi_tokenizer_t *t, bool strip_leading_space);
/* Free; accepts NULL and NULL-s the caller's pointer. */
void pi_detok_destroy(pi_detok_t **d);

/* Worst-case bytes one pi_detok_push() can write for t (so a buffer this large never fails). */
size_t pi_detok_max_push(const pi_tokenizer_t *t);

/* Feed one token; write to out[0..cap) the bytes that are now complete, valid UTF-8. A token that
 * ends inside a UTF-8 sequence is held until the sequence completes; a byte that cannot be part of
 * valid UTF-8 becomes U+FFFD (one per maximal invalid subpart). Output is not NUL-terminated.
 * Returns the bytes written (>= 0), -PI_ERR_RANGE when cap is too small (nothing consumed), or
 * -PI_ERR_INVAL for an id out of range (nothing consumed). */
int pi_detok_push(pi_detok_t *d, int32_t id, char *out, size_t cap);

/* End of stream: write what is held (an incomplete sequence becomes U+FFFD); cap >= 4 always
 * suffices. Returns bytes written or -PI_ERR_RANGE. The detokenizer can then be reused. */
int pi_detok_flush(pi_detok_t *d, char *out, size_t cap);

#endif
