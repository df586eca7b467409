/*
 * tests/unit/fuzz-gguf.c - libFuzzer target for the GGUF reader (`make fuzz`, needs clang).
 *
 * Opens each input with pi_gguf_open_buffer and, when it is accepted, walks everything the API hands
 * out the way a loader would: every key through every typed getter, every array element, every
 * tensor's first and last data byte, and every name looked up again; then the tensor values' check
 * (model/tensor-check.h) at both depths, which must agree (the sampled check reads a subset of the
 * full one's blocks: it may pass where full refuses, never the other way round). Built with ASan and
 * UBSan, so any read outside the input, overflow or leak is a finding. Not part of `make check`.
 */
#include "config.h"
#include "model/gguf.h"
#include "model/tensor-check.h"
#include "lib/common.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void touch_str(struct pi_gguf_str s)
{
    if (s.len) sink += (unsigned char)s.ptr[0] + (unsigned char)s.ptr[s.len - 1];
}

static void walk_kv(const pi_gguf_t *g, uint64_t i)
{
    uint64_t u, n;
    int64_t v;
    double d;
    bool b;
    enum pi_gguf_vtype et;
    struct pi_gguf_str s, key = pi_gguf_key(g, i);
    char name[256];
    touch_str(key);
    if (key.len < sizeof name && !memchr(key.ptr, 0, key.len)) {
        memcpy(name, key.ptr, key.len);
        name[key.len] = '\0';
        if (pi_gguf_find_key(g, name) != (int64_t)i) abort(); /* keys are unique: lookup finds this one */
    }
    if (pi_gguf_kv_uint(g, i, &u) == 0) sink += u;
    if (pi_gguf_kv_int(g, i, &v) == 0) sink += (uint64_t)v;
    if (pi_gguf_kv_f64(g, i, &d) == 0) sink += (uint64_t)(d == d);
    if (pi_gguf_kv_bool(g, i, &b) == 0) sink += b;
    if (pi_gguf_kv_str(g, i, &s) == 0) touch_str(s);
    if (pi_gguf_kv_arr(g, i, &et, &n) == 0) {
        const uint8_t *p = pi_gguf_kv_arr_data(g, i);
        size_t esz = pi_gguf_vtype_size(et);
        if (p && n) sink += p[0] + p[n * esz - 1];
        for (uint64_t j = 0; et == PI_GGUF_STRING && j < n; j++)
            if (pi_gguf_kv_arr_str(g, i, j, &s) == 0) touch_str(s);
        if (pi_gguf_kv_arr_str(g, i, n, &s) != -PI_ERR_RANGE && et == PI_GGUF_STRING) abort();
    }
}

static void walk_tensor(const pi_gguf_t *g, uint64_t i)
{
    const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
    const uint8_t *d = t->data;
    char name[256];
    if (t->n_bytes) sink += d[0] + d[t->n_bytes - 1];
    if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, t->name.len)) {
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = '\0';
        if (pi_gguf_find_tensor(g, name) != t) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    pi_gguf_t *g = NULL;
    /* A private copy, so the sanitizer sees the exact bounds even for the empty input. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    int rc = pi_gguf_open_buffer(size ? copy : NULL, size, &g, err, sizeof err);
    if (rc == 0) {
        for (uint64_t i = 0; i < pi_gguf_n_kv(g); i++) walk_kv(g, i);
        for (uint64_t i = 0; i < pi_gguf_n_tensors(g); i++) walk_tensor(g, i);
        const int full = pi_tensor_check_file(g, PI_TENSOR_CHECK_FULL, err, sizeof err);
        const int sampled = pi_tensor_check_file(g, PI_TENSOR_CHECK_SAMPLED, err, sizeof err);
        if ((full != 0 && full != -PI_ERR_FORMAT) || (sampled != 0 && full == 0)) {
            fprintf(stderr, "tensor check: full %d, sampled %d: %s\n", full, sampled, err);
            abort();
        }
        pi_gguf_destroy(&g);
    } else if (!strstr(err, " at offset ") || g != NULL) {
        fprintf(stderr, "rejection without an offset: %s\n", err);
        abort();
    }
    free(copy);
    return 0;
}
