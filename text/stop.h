/*
 * text/stop.h - stop strings for streamed generation: find where the output must end, and never send
 * the client bytes that might turn out to be the start of a stop string or half of a character.
 *
 * Detokenised text arrives in chunks (one per token, and a token can carry part of a stop string or
 * of a multi-byte UTF-8 character). After each chunk the matcher says which bytes are safe to send:
 * everything except a tail that is a proper prefix of some stop string, or an incomplete UTF-8
 * sequence. When a stop string completes, generation ends; the text before it is sent and the stop
 * string itself is not (OpenAI's and vLLM's behaviour).
 *
 * Semantics, the same whether the text comes in one piece or in any chunking:
 *   - the match is the one that completes first (smallest end offset); of those ending at the same
 *     byte, the longest; then the lowest index. This is what a stream can decide without waiting.
 *   - matching is on bytes. Stop strings must be valid UTF-8, and UTF-8 is self-synchronising, so a
 *     match in valid text always starts and ends on character boundaries.
 * Each stop string runs a Knuth-Morris-Pratt automaton, so a byte costs O(number of stop strings)
 * amortised, and the state itself tells how long a tail must be held.
 */
#ifndef PI_TEXT_STOP_H
#define PI_TEXT_STOP_H

#include <stddef.h>
#include <stdint.h>

#define PI_STOP_MAX_STRINGS 64 /* per request; OpenAI allows 4 */
#define PI_STOP_MAX_LEN 1024   /* bytes per stop string */

typedef struct pi_stop pi_stop_t;

/* What the caller may send after a feed or a flush. */
struct pi_stop_out {
    const char *text; /* bytes safe to send now; borrowed until the next call on this matcher */
    size_t len;
    int32_t stop;     /* index of the stop string that ended generation, or -1 */
};

/* A matcher for n stop strings (0 <= n <= PI_STOP_MAX_STRINGS; each NUL-terminated, non-empty, valid
 * UTF-8 and at most PI_STOP_MAX_LEN bytes; copied). With n == 0 it only holds back incomplete UTF-8.
 * Returns NULL on invalid strings (logged, naming which) or out of memory. */
pi_stop_t *pi_stop_new(const char *const *stops, size_t n);

/* Free *m and set *m to NULL. Accepts NULL and *m == NULL. */
void pi_stop_destroy(pi_stop_t **m);

/* Forget the stream (held bytes, automaton states, a previous match), keeping the stop strings. */
void pi_stop_reset(pi_stop_t *m);

/* Append chunk (len bytes, may be 0, need not be NUL-terminated or end on a character boundary) to
 * the stream. out->text/len: the bytes to send now, continuing what earlier calls sent. out->stop:
 * -1, or the index of the stop string that completed; the text before it has then been sent in full
 * and later feeds return nothing. Returns 0, or -PI_ERR_NOMEM (the chunk was not taken). */
int pi_stop_feed(pi_stop_t *m, const char *chunk, size_t len, struct pi_stop_out *out);

/* End of stream without a stop string (end-of-generation token, length limit): release every held
 * byte, an incomplete UTF-8 tail included (the client gets what the model produced). out->stop is
 * the earlier match, if any, in which case nothing is released. The matcher must be reset before the
 * next stream. */
void pi_stop_flush(pi_stop_t *m, struct pi_stop_out *out);

/* The same decision for a caller that keeps the whole text: scan text (len,) from the start. Returns
 * the index of the first-completing stop string and sets *match_at to its start offset, and
 * *safe_len = *match_at; or returns -1 and sets *safe_len to the length of the prefix that is safe to
 * send (len minus the held tail). match_at may be NULL. */
int32_t pi_stop_find(const pi_stop_t *m, const char *text, size_t len, size_t *match_at, size_t *safe_len);

/* The longest stop string in bytes (0 with none): a tail of at most this minus one is ever held for
 * stop strings, at most 3 for UTF-8. */
size_t pi_stop_max_len(const pi_stop_t *m);

#endif
