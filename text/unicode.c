/*
 * text/unicode.c - UTF-8 coding and code point class lookup for the tokenizers (see text/unicode.h).
 * The tables themselves are generated into text/unicode-data.c.
 */
#include "config.h"

#include "text/unicode.h"

#include "lib/common.h"

/* Binary search of the run containing cp: the last run whose start is <= cp. */
static uint16_t flags_search(uint32_t cp)
{
    size_t lo = 0, hi = pi_unicode_n_runs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (pi_unicode_run_start[mid] <= cp) lo = mid;
        else hi = mid;
    }
    return pi_unicode_run_flags[lo];
}

uint16_t pi_unicode_flags(uint32_t cp)
{
    if (cp < 256) return pi_unicode_latin1[cp];
    if (cp > 0x10FFFF) return 0;
    return flags_search(cp);
}

bool pi_unicode_in_dsllm_letters(uint32_t cp)
{
    size_t lo = 0, hi = pi_unicode_n_dsllm;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < pi_unicode_dsllm[mid][0]) hi = mid;
        else if (cp > pi_unicode_dsllm[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

/* Look cp up in sorted inclusive ranges {first, last, target}. */
static uint32_t map_ranges(const uint32_t (*r)[3], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return r[mid][2];
    }
    return cp;
}

uint32_t pi_unicode_nfd_first(uint32_t cp)
{
    return cp < 0xC0 ? cp : map_ranges(pi_unicode_nfd, pi_unicode_n_nfd, cp);
}

uint32_t pi_unicode_tolower(uint32_t cp)
{
    if (cp < 128) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    return map_ranges(pi_unicode_lower, pi_unicode_n_lower, cp);
}

size_t pi_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char b = s[0];
    size_t len;
    uint32_t v;
    PI_ASSERT(n >= 1);
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if ((b & 0xE0) == 0xC0) {
        len = 2;
        v = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
        len = 3;
        v = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
        len = 4;
        v = b & 0x07;
    } else {
        *cp = PI_UTF8_REPLACEMENT; /* a continuation byte or 0xF8..0xFF as lead */
        return 1;
    }
    if (len > n) {
        *cp = PI_UTF8_REPLACEMENT;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = PI_UTF8_REPLACEMENT;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return len;
}

size_t pi_utf8_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp > 0x10FFFF) cp = PI_UTF8_REPLACEMENT;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
