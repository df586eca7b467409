/*
 * tests/unit/test-stop.c - the stop-string matcher: hand-made cases (chunk boundaries, held prefixes,
 * several stop strings, overlapping prefixes, UTF-8 split across chunks), then random streams
 * checked against a brute-force reference written here from the definition: the first stop string
 * to complete (smallest end, then longest, then lowest index); with none, everything except the
 * longest tail that is a proper prefix of a stop string or an unfinished UTF-8 character.
 */
#include "config.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "text/stop.h"
#include "tests/tap.h"

#include <fcntl.h>

/* Everything a stream sent, concatenated; and how it ended. */
struct sink {
    char text[8192];
    size_t len;
    int32_t stop;
};

static void sink_add(struct sink *k, const struct pi_stop_out *o)
{
    if (k->len + o->len < sizeof k->text) memcpy(k->text + k->len, o->text, o->len);
    k->len += o->len;
    k->stop = o->stop;
}

/* Stream text in chunks of the given sizes (cycled), then flush. */
static void stream(pi_stop_t *m, const char *text, size_t len, const size_t *sizes, size_t n_sizes, struct sink *k)
{
    struct pi_stop_out o;
    memset(k, 0, sizeof *k);
    k->stop = -1;
    pi_stop_reset(m);
    for (size_t at = 0, i = 0; at < len; i++) {
        size_t c = PI_MIN(sizes[i % n_sizes], len - at);
        if (pi_stop_feed(m, text + at, c, &o) != 0) tap_bail("feed failed");
        sink_add(k, &o);
        at += c;
    }
    pi_stop_flush(m, &o);
    sink_add(k, &o);
}

static void test_basics(void)
{
    const char *stops[] = {"</s>", "\n\nUser:", "###"};
    pi_stop_t *m = pi_stop_new(stops, 3);
    tap_ok(m != NULL, "matcher for three stop strings");
    struct pi_stop_out o;

    tap_is_int(pi_stop_feed(m, "Hello </", 8, &o), 0, "feed");
    tap_ok(o.len == 6 && memcmp(o.text, "Hello ", 6) == 0 && o.stop == -1, "a possible stop prefix \"</\" is held back");
    pi_stop_feed(m, "p> ok", 5, &o);
    tap_ok(o.len == 7 && memcmp(o.text, "</p> ok", 7) == 0, "released once it can no longer match");
    pi_stop_feed(m, "\n", 1, &o);
    tap_is_int((long long)o.len, 0, "\"\\n\" is held (prefix of \"\\n\\nUser:\")");
    pi_stop_feed(m, "\nUse", 4, &o);
    tap_is_int((long long)o.len, 0, "\"\\n\\nUse\" still held");
    pi_stop_feed(m, "r: hi", 5, &o);
    tap_ok(o.stop == 1 && o.len == 0, "stop string 1 completes across three chunks; nothing of it is sent");
    pi_stop_feed(m, "more", 4, &o);
    tap_ok(o.stop == 1 && o.len == 0, "after the stop, feeds send nothing");
    pi_stop_flush(m, &o);
    tap_ok(o.stop == 1 && o.len == 0, "and flush sends nothing");

    pi_stop_reset(m);
    pi_stop_feed(m, "x#", 2, &o);
    tap_ok(o.len == 1 && o.text[0] == 'x', "reset: a new stream");
    pi_stop_flush(m, &o);
    tap_ok(o.len == 1 && o.text[0] == '#' && o.stop == -1, "flush at the end releases the held \"#\"");
    pi_stop_destroy(&m);
    pi_stop_destroy(&m);
    tap_ok(m == NULL, "destroy nulls the pointer and accepts NULL");

    /* Overlapping prefixes: KMP must fall back correctly. */
    const char *s2[] = {"aab", "abab"};
    m = pi_stop_new(s2, 2);
    size_t at = 0, safe = 0;
    tap_is_int(pi_stop_find(m, "xaaab", 5, &at, &safe), 0, "\"aab\" found in \"xaaab\"");
    tap_is_int((long long)at, 2, "at offset 2");
    tap_is_int(pi_stop_find(m, "aabab", 5, &at, &safe), 0, "the first to complete wins (\"aab\" ends at 3)");
    tap_is_int(pi_stop_find(m, "abaab", 5, &at, &safe), 0, "after a failed \"abab\", \"aab\" at 2");
    tap_is_int(pi_stop_find(m, "ababa", 5, &at, &safe), 1, "\"abab\" in \"ababa\"");
    tap_is_int(pi_stop_find(m, "xaba", 4, NULL, &safe), -1, "no match in \"xaba\"");
    tap_is_int((long long)safe, 1, "\"aba\" held (a prefix of \"abab\")");
    pi_stop_destroy(&m);

    /* Same end: the longer (earlier) one; then the lower index. */
    const char *s3[] = {"b", "ab", "ab"};
    m = pi_stop_new(s3, 3);
    tap_is_int(pi_stop_find(m, "zab", 3, &at, &safe), 1, "two strings end on the same byte: the longer wins");
    tap_is_int((long long)safe, 1, "and the text before it is \"z\"");
    pi_stop_destroy(&m);
}

static void test_utf8(void)
{
    const char *stops[] = {"。", "END"}; /* U+3002: E3 80 82 */
    pi_stop_t *m = pi_stop_new(stops, 2);
    struct pi_stop_out o;
    pi_stop_feed(m, "caf\xc3", 4, &o);
    tap_ok(o.len == 3, "the lead byte of a split \"é\" is held");
    pi_stop_feed(m, "\xa9 \xe3\x80", 4, &o);
    tap_ok(o.len == 3 && memcmp(o.text, "\xc3\xa9 ", 3) == 0, "\"é \" is sent whole; the start of \"。\" is held");
    pi_stop_feed(m, "\x81x", 2, &o);
    tap_ok(o.len == 4 && memcmp(o.text, "\xe3\x80\x81x", 4) == 0, "\"、\" shares two bytes with \"。\" but is not it");
    pi_stop_feed(m, "\xf0\x9f", 2, &o);
    tap_is_int((long long)o.len, 0, "half an emoji is held");
    pi_stop_feed(m, "\x98\x80\xe3\x80\x82tail", 9, &o);
    tap_ok(o.stop == 0 && o.len == 4 && memcmp(o.text, "\xf0\x9f\x98\x80", 4) == 0, "the emoji is sent, \"。\" stops");
    pi_stop_destroy(&m);

    /* With no stop strings the matcher still keeps characters whole; stray bytes pass. */
    m = pi_stop_new(NULL, 0);
    pi_stop_feed(m, "ab\xe2\x82", 4, &o);
    tap_is_int((long long)o.len, 2, "no stop strings: an unfinished character is held");
    pi_stop_feed(m, "\xac\xff\x80z", 4, &o);
    tap_is_int((long long)o.len, 6, "completed \"€\" and the malformed bytes pass through");
    pi_stop_feed(m, "\xe2", 1, &o);
    pi_stop_flush(m, &o);
    tap_ok(o.len == 1 && (unsigned char)o.text[0] == 0xe2, "flush releases an unfinished character");
    pi_stop_destroy(&m);

    const char *bad1[] = {""}, *bad2[] = {"ok", "\xc3"}, *bad3[] = {"\xc0\xaf"}, *bad4[] = {"\xed\xa0\x80"};
    tap_ok(pi_stop_new(bad1, 1) == NULL, "an empty stop string is refused");
    tap_ok(pi_stop_new(bad2, 2) == NULL, "a truncated UTF-8 stop string is refused");
    tap_ok(pi_stop_new(bad3, 1) == NULL, "an overlong UTF-8 form is refused");
    tap_ok(pi_stop_new(bad4, 1) == NULL, "a UTF-16 surrogate is refused");
    const char *many[PI_STOP_MAX_STRINGS + 1];
    for (int i = 0; i <= PI_STOP_MAX_STRINGS; i++) many[i] = "x";
    tap_ok(pi_stop_new(many, PI_STOP_MAX_STRINGS + 1) == NULL, "more than PI_STOP_MAX_STRINGS is refused");
    char *longs = malloc(PI_STOP_MAX_LEN + 2);
    memset(longs, 'a', PI_STOP_MAX_LEN + 1);
    longs[PI_STOP_MAX_LEN + 1] = '\0';
    const char *lp[1] = {longs};
    tap_ok(pi_stop_new(lp, 1) == NULL, "a stop string over PI_STOP_MAX_LEN bytes is refused");
    longs[PI_STOP_MAX_LEN] = '\0';
    m = pi_stop_new(lp, 1);
    tap_ok(m != NULL && pi_stop_max_len(m) == PI_STOP_MAX_LEN, "one of exactly PI_STOP_MAX_LEN is accepted");
    pi_stop_destroy(&m);
    free(longs);
}

/* ---------------------------------------------------------------- random streams vs brute force */

struct ref {
    int32_t stop;
    size_t match_at; /* with a stop */
    size_t safe;     /* the safe prefix of text (len,) */
};

static bool is_prefix_suffix(const char *text, size_t len, const char *s, size_t k)
{
    return k <= len && memcmp(text + len - k, s, k) == 0;
}

/* Brute force from the definition. */
static struct ref brute(const char *const *stops, size_t n, const char *text, size_t len)
{
    struct ref r = {-1, 0, 0};
    for (size_t e = 1; e <= len; e++) {
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(stops[i]);
            if (l <= e && memcmp(text + e - l, stops[i], l) == 0 &&
                (r.stop < 0 || l > strlen(stops[r.stop])))
                r.stop = (int32_t)i;
        }
        if (r.stop >= 0) {
            r.match_at = r.safe = e - strlen(stops[r.stop]);
            return r;
        }
    }
    size_t hold = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 1; k < strlen(stops[i]); k++)
            if (is_prefix_suffix(text, len, stops[i], k) && k > hold) hold = k;
    /* An unfinished UTF-8 character: a lead byte in the last three with too few bytes after it. */
    for (size_t k = 1; k <= 3 && k <= len; k++) {
        unsigned char c = (unsigned char)text[len - k];
        if ((c & 0xc0) == 0x80) continue;
        size_t need = (c & 0xe0) == 0xc0 && c >= 0xc2 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 && c <= 0xf4 ? 4 : 1;
        if (need > k && k > hold) hold = k;
        break;
    }
    r.safe = len - hold;
    return r;
}

static void test_random(void)
{
    /* A small alphabet makes matches and near-matches frequent; multi-byte pieces test UTF-8. */
    static const char *const pieces[] = {"a", "b", "c", "\xc3\xa9", "\xe3\x80\x82", "\xe3\x80\x81", "\xf0\x9f\x98\x80", "\n"};
    struct pi_rng r;
    pi_rng_seed(&r, 99);
    int bad_stream = 0, bad_find = 0, bad_prefix = 0, matched = 0;
    const int trials = 3000;
    for (int t = 0; t < trials; t++) {
        char sbuf[4][32];
        const char *stops[4];
        size_t n = (size_t)pi_rng_below(&r, 4); /* 0..3 */
        for (size_t i = 0; i < n; i++) {
            size_t pl = 1 + (size_t)pi_rng_below(&r, 4), o = 0;
            for (size_t j = 0; j < pl; j++) {
                const char *pc = pieces[pi_rng_below(&r, 5) + (pi_rng_below(&r, 3) == 0 ? 3 : 0)];
                memcpy(sbuf[i] + o, pc, strlen(pc));
                o += strlen(pc);
            }
            sbuf[i][o] = '\0';
            stops[i] = sbuf[i];
        }
        char text[512];
        size_t len = 0, want = 10 + (size_t)pi_rng_below(&r, 60);
        while (len < want) {
            const char *pc = pieces[pi_rng_below(&r, PI_ARRAY_LEN(pieces))];
            memcpy(text + len, pc, strlen(pc));
            len += strlen(pc);
        }
        pi_stop_t *m = pi_stop_new(stops, n);
        if (!m) tap_bail("pi_stop_new failed in trial %d", t);
        struct ref ref = brute(stops, n, text, len);
        matched += ref.stop >= 0;

        /* pi_stop_find on the whole text, and on every prefix (the safe length must match too). */
        for (size_t l = 0; l <= len; l++) {
            struct ref b = brute(stops, n, text, l);
            size_t at = 0, safe = 0;
            int32_t got = pi_stop_find(m, text, l, &at, &safe);
            if (got != b.stop || safe != b.safe || (got >= 0 && at != b.match_at)) bad_find++;
        }

        /* Streamed in random chunks: the same outcome, and what was sent after every feed is the
         * safe prefix of the text so far (never more, never less). */
        size_t sizes[8];
        for (int i = 0; i < 8; i++) sizes[i] = (size_t)pi_rng_below(&r, 7); /* 0..6, zero-length chunks too */
        sizes[0] = sizes[0] ? sizes[0] : 1;
        struct pi_stop_out o;
        struct sink k = {.stop = -1};
        pi_stop_reset(m);
        for (size_t at = 0, i = 0; at < len && k.stop < 0; i++) {
            size_t c = PI_MIN(sizes[i % 8], len - at);
            pi_stop_feed(m, text + at, c, &o);
            sink_add(&k, &o);
            at += c;
            struct ref b = brute(stops, n, text, at);
            if (k.len != b.safe || memcmp(k.text, text, k.len) != 0) bad_prefix++;
        }
        pi_stop_flush(m, &o);
        sink_add(&k, &o);
        size_t want_len = ref.stop >= 0 ? ref.match_at : len;
        if (k.stop != ref.stop || k.len != want_len || memcmp(k.text, text, want_len) != 0) bad_stream++;
        pi_stop_destroy(&m);
    }
    tap_ok(bad_find == 0, "pi_stop_find agrees with brute force on every prefix (%d trials, %d differ)", trials, bad_find);
    tap_ok(bad_prefix == 0, "streaming sends exactly the safe prefix after every chunk (%d differ)", bad_prefix);
    tap_ok(bad_stream == 0, "streamed result equals the whole-text result (%d of %d matched a stop, %d differ)",
           matched, trials, bad_stream);

    /* A chunk far larger than the buffer. */
    const char *stops[] = {"STOP"};
    pi_stop_t *m = pi_stop_new(stops, 1);
    static char big[6000];
    memset(big, 'x', sizeof big);
    memcpy(big + 5000, "STOP", 4);
    size_t sizes[2] = {3000, 3000};
    struct sink k;
    stream(m, big, sizeof big, sizes, 2, &k);
    tap_ok(k.stop == 0 && k.len == 5000, "large chunks grow the buffer; match at 5000");
    pi_stop_destroy(&m);
}

int main(void)
{
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) pi_log_set_fd(devnull); /* the refusal cases log on purpose */
    test_basics();
    test_utf8();
    test_random();
    return tap_done();
}
