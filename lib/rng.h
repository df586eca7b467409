/*
 * lib/rng.h - pinfer's seeded pseudo-random generator: xoshiro256** seeded through SplitMix64.
 *
 * Sampling must be reproducible: the same seed and the same logits give the same tokens on every
 * machine and every build. rand() and friends differ between C libraries, so the generator is
 * specified here completely, with published algorithms (Blackman and Vigna, "Scrambled linear
 * pseudorandom number generators", 2018; SplitMix64 from Steele, Lea and Flood, 2014) and checked in
 * tests/unit/test-sample.c against their published output vectors. The state is plain data so that a
 * sampler can embed it and a test can set it.
 *
 * Not for cryptography. Not thread-safe: one generator per user.
 */
#ifndef PI_RNG_H
#define PI_RNG_H

#include <stdint.h>

/* xoshiro256** state. Never all zero (pi_rng_seed guarantees it). */
struct pi_rng {
    uint64_t s[4];
};

/* One step of SplitMix64: advance *state by the golden-ratio increment and return the mixed value.
 * Used to expand a 64-bit seed into the 256-bit state; exposed for tests and for deriving seeds. */
uint64_t pi_rng_splitmix64(uint64_t *state);

/* Advance a SplitMix64 state past n outputs at once (the state moves by a constant per output), so that
 * output k of a stream can be drawn without the k before it. */
static inline void pi_rng_splitmix64_skip(uint64_t *state, uint64_t n) { *state += n * 0x9e3779b97f4a7c15ULL; }

/* Seed r from a 64-bit seed: s[0..3] are the first four SplitMix64 outputs from state = seed. Any
 * seed is valid, 0 included. */
void pi_rng_seed(struct pi_rng *r, uint64_t seed);

/* Next 64-bit output of xoshiro256**, advancing the state. */
uint64_t pi_rng_next(struct pi_rng *r);

/* Uniform double in [0, 1): the top 53 bits of one output times 2^-53 (exact, never 1.0). */
double pi_rng_uniform(struct pi_rng *r);

/* Uniform integer in [0, n) without modulo bias (Lemire's multiply-and-reject); n > 0. Consumes one
 * output, more only on the rare rejection. */
uint64_t pi_rng_below(struct pi_rng *r, uint64_t n);

/* A seed from the operating system's entropy (getrandom), for callers that were given no seed (the
 * server reports the seed it picked so the run can be replayed). Falls back to the clock mixed with
 * the process id if getrandom fails. */
uint64_t pi_rng_entropy_seed(void);

#endif
