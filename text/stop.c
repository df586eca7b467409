/*
 * text/stop.c - the stop-string matcher behind text/stop.h.
 *
 * State per stop string: q, the length of the longest prefix of the string that is a suffix of the
 * stream so far (the KMP automaton state). A byte moves q through the prefix function ("failure"
 * table), amortised O(1). q == length means the string completed at this byte. Between chunks the
 * largest q over all strings is exactly the tail that must be held back: any match still to come
 * starts inside it. The matcher keeps the held tail in buf; bytes before it are sent.
 */
#include "config.h"
#include "text/stop.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdlib.h>
#include <string.h>

struct pi_stop_str {
    char *s;       /* (len,) the stop string, NUL-terminated copy */
    size_t len;
    uint16_t *fail; /* (len,) prefix function: fail[i] = longest proper border of s[0..i] */
};

struct pi_stop {
    size_t n;
    struct pi_stop_str *str; /* (n,) */
    size_t max_len;

    size_t q[PI_STOP_MAX_STRINGS]; /* automaton state per string for the stream */
    char *buf;                     /* (cap,) held tail, then the new chunk */
    size_t buf_len, cap;
    size_t sent;                   /* bytes at the start of buf handed out by the last call */
    int32_t stopped;               /* index of the match, or -1 */
};

/* Length of the valid UTF-8 character starting at s (n bytes available), or 0 when invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid; RFC 3629). */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return len;
}

static bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_char_len(u + i, n - i);
        if (l == 0) return false;
        i += l;
    }
    return true;
}

/* How many bytes at the end of s (n,) are the start of a multi-byte character still missing its
 * continuation bytes (0 to 3). Only a lead byte followed by continuation bytes counts; other
 * malformed bytes are passed through rather than held forever. */
static size_t utf8_incomplete_tail(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned c = u[n - k];
        if ((c & 0xc0) == 0x80) continue; /* continuation byte: look further back */
        size_t need = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

pi_stop_t *pi_stop_new(const char *const *stops, size_t n)
{
    if (n > PI_STOP_MAX_STRINGS) {
        pi_error("stop strings: %zu given, at most %d allowed", n, PI_STOP_MAX_STRINGS);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = stops[i] ? strlen(stops[i]) : 0;
        if (len == 0 || len > PI_STOP_MAX_LEN || !utf8_valid(stops[i], len)) {
            pi_error("stop string %zu: must be non-empty valid UTF-8 of at most %d bytes", i, PI_STOP_MAX_LEN);
            return NULL;
        }
    }
    pi_stop_t *m = calloc(1, sizeof *m);
    if (!m || (n > 0 && !(m->str = calloc(n, sizeof *m->str)))) goto nomem;
    m->n = n;
    for (size_t i = 0; i < n; i++) {
        struct pi_stop_str *t = &m->str[i];
        t->len = strlen(stops[i]);
        t->s = malloc(t->len + 1);
        t->fail = malloc(t->len * sizeof *t->fail);
        if (!t->s || !t->fail) goto nomem;
        memcpy(t->s, stops[i], t->len + 1);
        /* The prefix function, built the usual way: extend the previous border or fall back. */
        t->fail[0] = 0;
        for (size_t j = 1, k = 0; j < t->len; j++) {
            while (k > 0 && t->s[j] != t->s[k]) k = t->fail[k - 1];
            if (t->s[j] == t->s[k]) k++;
            t->fail[j] = (uint16_t)k;
        }
        m->max_len = PI_MAX(m->max_len, t->len);
    }
    /* Held tail (< max_len, and <= 3 for UTF-8) plus a typical chunk; grows for larger chunks. */
    m->cap = m->max_len + 64;
    if (!(m->buf = malloc(m->cap))) goto nomem;
    pi_stop_reset(m);
    return m;
nomem:
    pi_error("stop strings: out of memory");
    pi_stop_destroy(&m);
    return NULL;
}

void pi_stop_destroy(pi_stop_t **mp)
{
    if (!mp || !*mp) return;
    pi_stop_t *m = *mp;
    for (size_t i = 0; m->str && i < m->n; i++) {
        free(m->str[i].s);
        free(m->str[i].fail);
    }
    free(m->str);
    free(m->buf);
    free(m);
    *mp = NULL;
}

void pi_stop_reset(pi_stop_t *m)
{
    memset(m->q, 0, sizeof m->q);
    m->buf_len = m->sent = 0;
    m->stopped = -1;
}

size_t pi_stop_max_len(const pi_stop_t *m) { return m->max_len; }

/* Run the automata q (n,) over text[from..to). Returns the index of the first string to complete
 * and sets *end to the offset just past it, or returns -1 with q advanced to the end. */
static int32_t run(const pi_stop_t *m, size_t *q, const char *text, size_t from, size_t to, size_t *end)
{
    for (size_t j = from; j < to; j++) {
        const char b = text[j];
        int32_t hit = -1;
        for (size_t i = 0; i < m->n; i++) {
            const struct pi_stop_str *t = &m->str[i];
            size_t k = q[i];
            while (k > 0 && t->s[k] != b) k = t->fail[k - 1];
            if (t->s[k] == b) k++;
            q[i] = k;
            /* Same end byte: the longer string wins (starts earlier), then the lower index. */
            if (k == t->len && (hit < 0 || t->len > m->str[hit].len)) hit = (int32_t)i;
        }
        if (hit >= 0) {
            *end = j + 1;
            return hit;
        }
    }
    return -1;
}

/* Bytes at the end of text (len,) to hold back given the automaton states q. */
static size_t held_tail(const pi_stop_t *m, const size_t *q, const char *text, size_t len)
{
    size_t hold = utf8_incomplete_tail(text, len);
    for (size_t i = 0; i < m->n; i++) hold = PI_MAX(hold, q[i]);
    PI_ASSERT(hold <= len);
    return hold;
}

int32_t pi_stop_find(const pi_stop_t *m, const char *text, size_t len, size_t *match_at, size_t *safe_len)
{
    size_t q[PI_STOP_MAX_STRINGS] = {0};
    size_t end = 0;
    int32_t hit = run(m, q, text, 0, len, &end);
    if (hit >= 0) {
        size_t at = end - m->str[hit].len;
        if (match_at) *match_at = at;
        *safe_len = at;
        return hit;
    }
    *safe_len = len - held_tail(m, q, text, len);
    return -1;
}

/* Drop the bytes handed out by the previous call from the front of buf. */
static void drop_sent(pi_stop_t *m)
{
    if (m->sent == 0) return;
    memmove(m->buf, m->buf + m->sent, m->buf_len - m->sent);
    m->buf_len -= m->sent;
    m->sent = 0;
}

int pi_stop_feed(pi_stop_t *m, const char *chunk, size_t len, struct pi_stop_out *out)
{
    out->text = m->buf;
    out->len = 0;
    out->stop = m->stopped;
    if (m->stopped >= 0) return 0;
    drop_sent(m);
    if (m->buf_len + len > m->cap) {
        size_t cap = PI_MAX(m->cap * 2, m->buf_len + len);
        char *b = realloc(m->buf, cap);
        if (!b) {
            pi_error("stop strings: out of memory for a %zu-byte chunk", len);
            return -PI_ERR_NOMEM;
        }
        m->buf = b;
        m->cap = cap;
    }
    if (len > 0) memcpy(m->buf + m->buf_len, chunk, len);
    const size_t from = m->buf_len;
    m->buf_len += len;
    out->text = m->buf;

    size_t end = 0;
    int32_t hit = run(m, m->q, m->buf, from, m->buf_len, &end);
    if (hit >= 0) {
        /* The match's first len-1 bytes were held (they were the automaton's state), so it starts
         * inside buf, at or after everything sent before. */
        PI_ASSERT(end >= m->str[hit].len);
        m->stopped = hit;
        out->stop = hit;
        out->len = end - m->str[hit].len;
        m->sent = m->buf_len = 0;
        return 0;
    }
    out->len = m->buf_len - held_tail(m, m->q, m->buf, m->buf_len);
    m->sent = out->len;
    return 0;
}

void pi_stop_flush(pi_stop_t *m, struct pi_stop_out *out)
{
    out->stop = m->stopped;
    out->text = m->buf;
    out->len = 0;
    if (m->stopped >= 0) return;
    drop_sent(m);
    out->len = m->buf_len;
    m->sent = m->buf_len;
    memset(m->q, 0, sizeof m->q);
}
