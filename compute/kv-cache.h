/*
 * compute/kv-cache.h - the attention key/value cache: per sequence, per layer, one row of kv_dim keys and
 * one of values per position, stored as f32 or f16.
 *
 * Layout of one sequence (allocated on its first use): K (n_layer, n_ctx, kv_dim) then
 * V (n_layer, n_ctx, kv_dim), rows contiguous, so the attention reads one head's keys at a fixed
 * stride (pi_kv_row_bytes). A sequence's length is the number of positions filled from 0; appending
 * continues at that length, truncation just lowers it. Not thread-safe for concurrent writes to one
 * sequence; distinct rows may be stored from different threads.
 */
#ifndef PI_COMPUTE_KV_CACHE_H
#define PI_COMPUTE_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/types.h"

typedef struct pi_kv pi_kv_t;

/* A cache for up to n_seq sequences of n_ctx positions; type is PI_TYPE_F32 or PI_TYPE_F16.
 * Nothing per sequence is allocated yet, but the size of all n_seq sequences is computed with
 * overflow checks and must fit in physical memory. Returns NULL on a bad argument or a cache past
 * that bound (logged, with the sizes), or no memory. */
pi_kv_t *pi_kv_new(int n_layer, int kv_dim, int n_ctx, int n_seq, enum pi_type type);
void pi_kv_destroy(pi_kv_t **kv);

int pi_kv_n_ctx(const pi_kv_t *kv);
int pi_kv_n_seq(const pi_kv_t *kv);
enum pi_type pi_kv_type(const pi_kv_t *kv);
/* Bytes from one position's row to the next (kv_dim elements). */
size_t pi_kv_row_bytes(const pi_kv_t *kv);

/* Make sure seq's storage exists (0, or -PI_ERR_NOMEM / -PI_ERR_RANGE for a bad seq, logged). */
int pi_kv_reserve(pi_kv_t *kv, int seq);

/* Positions filled in seq (0 for an unused sequence). */
int pi_kv_len(const pi_kv_t *kv, int seq);
/* Set seq's length to n (0 <= n <= its length, or up to n_ctx when the caller has just stored those
 * rows). Used to commit a batch and to truncate; 0 resets the sequence (storage is kept). */
void pi_kv_set_len(pi_kv_t *kv, int seq, int n);

/* Row pointers of (seq, layer, pos), kv_dim elements of the cache type; seq must be reserved. */
void *pi_kv_k(pi_kv_t *kv, int seq, int layer, int pos);
void *pi_kv_v(pi_kv_t *kv, int seq, int layer, int pos);

/* Store k and v (kv_dim) f32 at (seq, layer, pos), converting to the cache type. */
void pi_kv_store(pi_kv_t *kv, int seq, int layer, int pos, const float *k, const float *v);

#endif
