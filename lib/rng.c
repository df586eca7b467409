/*
 * lib/rng.c - xoshiro256** and SplitMix64, written from the published algorithm descriptions
 * (constants and shift/rotate amounts: Blackman and Vigna 2018, https://prng.di.unimi.it/; SplitMix64
 * increment and mixer: Steele, Lea and Flood 2014). Every operation is on uint64_t with wrap-around,
 * so the output is identical on every platform.
 */
#include "config.h"
#include "lib/rng.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t pi_rng_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void pi_rng_seed(struct pi_rng *r, uint64_t seed)
{
    uint64_t st = seed;
    for (int i = 0; i < 4; i++) r->s[i] = pi_rng_splitmix64(&st);
    /* Four consecutive SplitMix64 outputs are never all zero (the mixer is a bijection of distinct
     * inputs), but keep the invariant explicit: the all-zero state is a fixed point. */
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) r->s[0] = 1;
}

uint64_t pi_rng_next(struct pi_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

double pi_rng_uniform(struct pi_rng *r) { return (double)(pi_rng_next(r) >> 11) * 0x1.0p-53; }

uint64_t pi_rng_below(struct pi_rng *r, uint64_t n)
{
    /* 128-bit product: the high word is uniform in [0, n) once low words below 2^64 mod n are
     * rejected (Lemire, "Fast random integer generation in an interval", 2019). */
    unsigned __int128 m = (unsigned __int128)pi_rng_next(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t threshold = (0 - n) % n;
        while (lo < threshold) {
            m = (unsigned __int128)pi_rng_next(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

uint64_t pi_rng_entropy_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) == (ssize_t)sizeof seed) return seed;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t st = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 48);
    return pi_rng_splitmix64(&st);
}
