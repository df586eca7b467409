/*
 * compute/placement.c - the placement map, its byte accounting, its wire form and the segment that
 * carries it to the workers (compute/placement.h). The choice of a placement is compute/placement-choose.c.
 */
#include "config.h"
#include "compute/placement.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/types.h"
#include "model/gguf.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the placement map ---- */

static struct pi_placement *alloc_placement(int n_layer, int n_ff, int n_workers)
{
    struct pi_placement *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_layer = n_layer, p->n_ff = n_ff, p->n_workers = n_workers;
    p->ids = malloc((size_t)n_layer * (size_t)n_ff * sizeof *p->ids);
    p->off = calloc((size_t)n_layer * (size_t)(n_workers + 2), sizeof *p->off);
    if (!p->ids || !p->off) pi_placement_destroy(&p);
    return p;
}

void pi_placement_destroy(struct pi_placement **pp)
{
    if (!pp || !*pp) return;
    free((*pp)->ids);
    free((*pp)->off);
    free(*pp);
    *pp = NULL;
}

static bool shape_ok(int n_layer, int n_ff, int n_workers)
{
    return n_layer > 0 && n_ff > 0 && n_workers >= 0 && n_workers <= PI_PLACEMENT_MAX_WORKERS &&
           (uint64_t)n_layer * (uint64_t)n_ff <= (UINT64_C(1) << 34);
}

int pi_placement_new(int n_layer, int n_ff, int n_workers, const int32_t *const *hot, const int64_t *n_hot,
                     struct pi_placement **out)
{
    return pi_placement_new_weighted(n_layer, n_ff, n_workers, hot, n_hot, NULL, out);
}

int pi_placement_new_weighted(int n_layer, int n_ff, int n_workers, const int32_t *const *hot, const int64_t *n_hot,
                              const float *weight, struct pi_placement **out)
{
    *out = NULL;
    if (!shape_ok(n_layer, n_ff, n_workers) || !n_hot) {
        pi_error("placement: bad shape (%d layers, %d neurons, %d CPU workers)", n_layer, n_ff, n_workers);
        return -PI_ERR_INVAL;
    }
    struct pi_placement *p = alloc_placement(n_layer, n_ff, n_workers);
    uint8_t *is_hot = malloc((size_t)n_ff);
    if (!p || !is_hot) { pi_placement_destroy(&p); free(is_hot); return -PI_ERR_NOMEM; }
    const int W = n_workers;
    for (int il = 0; il < n_layer; il++) {
        const int64_t nh = n_hot[il];
        if (nh < 0 || nh > n_ff || (nh < n_ff && W == 0)) {
            pi_error("placement: layer %d: %lld hot neurons of %d with %d CPU workers", il, (long long)nh, n_ff, W);
            goto bad;
        }
        memset(is_hot, 0, (size_t)n_ff);
        for (int64_t i = 0; i < nh; i++) {
            const int32_t id = hot ? hot[il][i] : (int32_t)i;
            if (id < 0 || id >= n_ff || is_hot[id]) {
                pi_error("placement: layer %d: hot id %d is out of range [0, %d) or repeated", il, id, n_ff);
                goto bad;
            }
            is_hot[id] = 1;
        }
        int32_t *ids = p->ids + (size_t)il * (size_t)n_ff;
        int64_t *o = p->off + (size_t)il * (size_t)(W + 2);
        int64_t k = 0;
        for (int32_t id = 0; id < n_ff; id++) /* the hot ids ascending, then the cold ones */
            if (is_hot[id]) ids[k++] = id;
        for (int32_t id = 0; id < n_ff; id++)
            if (!is_hot[id]) ids[k++] = id;
        const int64_t cold = n_ff - nh;
        o[0] = 0;
        if (!weight || W == 0) {
            for (int w = 0; w < W; w++) o[1 + w] = nh + cold * w / W; /* worker w: cold ids [cold*w/W, cold*(w+1)/W) */
        } else { /* consecutive cold ids, cut where the running weight crosses w / W of the layer's */
            const float *wt = weight + (size_t)il * (size_t)n_ff;
            double total = 0, run = 0;
            for (int64_t j = nh; j < n_ff; j++) total += wt[ids[j]] > 0 ? wt[ids[j]] : 0;
            int64_t j = nh;
            for (int w = 0; w < W; w++) {
                const double want = total * w / W;
                while (j < n_ff && run < want) run += wt[ids[j]] > 0 ? wt[ids[j]] : 0, j++;
                o[1 + w] = j;
            }
        }
        o[W + 1] = n_ff;
    }
    free(is_hot);
    *out = p;
    return 0;
bad:
    free(is_hot);
    pi_placement_destroy(&p);
    return -PI_ERR_INVAL;
}

int pi_placement_prefix(int n_layer, int n_ff, int n_workers, int64_t k, struct pi_placement **out)
{
    int64_t *nh = malloc((size_t)(n_layer > 0 ? n_layer : 1) * sizeof *nh);
    if (!nh) return -PI_ERR_NOMEM;
    for (int il = 0; il < n_layer; il++) nh[il] = k;
    int rc = pi_placement_new(n_layer, n_ff, n_workers, NULL, nh, out);
    free(nh);
    return rc;
}

int64_t pi_placement_hot_total(const struct pi_placement *p)
{
    int64_t t = 0, n;
    for (int il = 0; il < p->n_layer; il++) t += (pi_placement_hot(p, il, &n), n);
    return t;
}

int64_t pi_placement_hot_max(const struct pi_placement *p)
{
    int64_t t = 0, n;
    for (int il = 0; il < p->n_layer; il++) t = PI_MAX(t, (pi_placement_hot(p, il, &n), n));
    return t;
}

uint64_t pi_placement_bytes(const struct pi_placement *p, const pi_model_t *m, int il, int g)
{
    if (il < 0) {
        uint64_t b = 0;
        for (int l = 0; l < p->n_layer; l++) b += pi_placement_bytes(p, m, l, g);
        return b;
    }
    const struct pi_layer *L = &m->layers[il];
    uint64_t down = L->ffn_down_t.data ? L->ffn_down_t.row_bytes : 0;
    if (!down && !pi_type_row_bytes(L->ffn_down.type, (uint64_t)m->hp.n_embd, &down)) down = 4u * (uint64_t)m->hp.n_embd;
    int64_t n;
    pi_placement_group(p, il, g, &n);
    return (uint64_t)n * (L->ffn_gate.row_bytes + L->ffn_up.row_bytes + down);
}

/* ---- wire form ---- */

#define WIRE_HEAD 24u

static size_t wire_size(int n_layer, int n_ff, int n_workers)
{
    return WIRE_HEAD + (size_t)n_layer * (size_t)(n_workers + 1) * 4u + (size_t)n_layer * (size_t)n_ff * 4u;
}

size_t pi_placement_wire_size(const struct pi_placement *p) { return wire_size(p->n_layer, p->n_ff, p->n_workers); }

static void put32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)v, b[1] = (unsigned char)(v >> 8), b[2] = (unsigned char)(v >> 16), b[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

void pi_placement_to_wire(const struct pi_placement *p, void *buf)
{
    unsigned char *b = buf;
    const uint32_t head[6] = {PI_PLACEMENT_MAGIC, PI_PLACEMENT_VERSION, (uint32_t)p->n_layer, (uint32_t)p->n_ff,
                              (uint32_t)p->n_workers, 0};
    for (int i = 0; i < 6; i++, b += 4) put32(b, head[i]);
    for (int il = 0; il < p->n_layer; il++)
        for (int g = 0; g <= p->n_workers; g++, b += 4) {
            int64_t n;
            pi_placement_group(p, il, g, &n);
            put32(b, (uint32_t)n);
        }
    for (size_t i = 0; i < (size_t)p->n_layer * (size_t)p->n_ff; i++, b += 4) put32(b, (uint32_t)p->ids[i]);
}

int pi_placement_from_wire(const void *buf, size_t len, int n_layer, int n_ff, int n_workers, struct pi_placement **out,
                           char *err, size_t errlen)
{
    const unsigned char *b = buf;
    *out = NULL;
#define WIRE_BAD(...)                                            \
    do {                                                         \
        snprintf(err, errlen, __VA_ARGS__);                      \
        pi_error("placement: %s", err);                          \
        rc = -PI_ERR_FORMAT;                                     \
        goto done;                                               \
    } while (0)
    int rc = 0;
    struct pi_placement *p = NULL;
    uint8_t *seen = NULL;
    if (!shape_ok(n_layer, n_ff, n_workers)) WIRE_BAD("bad expected shape");
    if (!buf || len < WIRE_HEAD) WIRE_BAD("%zu bytes: shorter than the header", len);
    if (get32(b) != PI_PLACEMENT_MAGIC) WIRE_BAD("bad magic 0x%08x", get32(b));
    if (get32(b + 4) != PI_PLACEMENT_VERSION) WIRE_BAD("version %u, expected %u", get32(b + 4), PI_PLACEMENT_VERSION);
    if (get32(b + 8) != (uint32_t)n_layer || get32(b + 12) != (uint32_t)n_ff || get32(b + 16) != (uint32_t)n_workers)
        WIRE_BAD("made for %u layers of %u neurons and %u CPU workers, not %d, %d and %d", get32(b + 8), get32(b + 12),
                 get32(b + 16), n_layer, n_ff, n_workers);
    if (get32(b + 20) != 0) WIRE_BAD("reserved field is not 0");
    if (len != wire_size(n_layer, n_ff, n_workers))
        WIRE_BAD("%zu bytes, expected %zu", len, wire_size(n_layer, n_ff, n_workers));
    if (!(p = alloc_placement(n_layer, n_ff, n_workers)) || !(seen = malloc((size_t)n_ff))) { rc = -PI_ERR_NOMEM; goto done; }
    const unsigned char *cnt = b + WIRE_HEAD, *idb = cnt + (size_t)n_layer * (size_t)(n_workers + 1) * 4u;
    for (int il = 0; il < n_layer; il++) {
        int64_t *o = p->off + (size_t)il * (size_t)(n_workers + 2);
        o[0] = 0;
        for (int g = 0; g <= n_workers; g++) {
            uint32_t c = get32(cnt + ((size_t)il * (size_t)(n_workers + 1) + (size_t)g) * 4u);
            if (c > (uint32_t)n_ff || o[g] + (int64_t)c > n_ff) WIRE_BAD("layer %d: group sizes exceed %d neurons", il, n_ff);
            o[g + 1] = o[g] + c;
        }
        if (o[n_workers + 1] != n_ff) WIRE_BAD("layer %d: groups hold %lld of %d neurons", il, (long long)o[n_workers + 1], n_ff);
        if (n_workers == 0 && o[1] != n_ff) WIRE_BAD("layer %d: cold neurons without CPU workers", il);
        memset(seen, 0, (size_t)n_ff);
        int32_t *ids = p->ids + (size_t)il * (size_t)n_ff;
        for (int g = 0; g <= n_workers; g++)
            for (int64_t i = o[g]; i < o[g + 1]; i++) {
                uint32_t v = get32(idb + ((size_t)il * (size_t)n_ff + (size_t)i) * 4u);
                if (v >= (uint32_t)n_ff || seen[v]) WIRE_BAD("layer %d: id %u out of range or repeated", il, v);
                if (i > o[g] && (int32_t)v <= ids[i - 1]) WIRE_BAD("layer %d: group %d not ascending", il, g);
                seen[v] = 1;
                ids[i] = (int32_t)v;
            }
    }
#undef WIRE_BAD
done:
    free(seen);
    if (rc == 0) *out = p;
    else pi_placement_destroy(&p);
    return rc;
}

int pi_placement_share(const struct pi_placement *p, pi_shm_t **out)
{
    const uint64_t size = pi_placement_wire_size(p);
    pi_shm_t *shm = pi_shm_new("pinfer-placement", PI_SHM_KIND_PLACEMENT, &size, 1);
    if (!shm) return -PI_ERR_NOMEM;
    pi_placement_to_wire(p, pi_shm_section(shm, 0, NULL));
    *out = shm;
    return 0;
}

int pi_placement_map_fd(int fd, int n_layer, int n_ff, int n_workers, struct pi_placement **out)
{
    pi_shm_t *shm = NULL;
    char err[256];
    *out = NULL;
    int rc = pi_shm_map_fd(fd, PI_SHM_KIND_PLACEMENT, &shm);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    uint64_t size = 0;
    const void *wire = pi_shm_n_sections(shm) == 1 ? pi_shm_section(shm, 0, &size) : NULL;
    if (!wire) {
        pi_error("placement: the segment has %u sections, expected 1", pi_shm_n_sections(shm));
        rc = -PI_ERR_FORMAT;
    } else {
        rc = pi_placement_from_wire(wire, (size_t)size, n_layer, n_ff, n_workers, out, err, sizeof err);
    }
    pi_shm_destroy(&shm);
    return rc;
}

/* ---- PowerInfer's GPU index file ---- */

int pi_placement_read_gpuidx(const char *path, int n_layer, int n_ff, int n_workers, struct pi_placement **out)
{
    pi_gguf_t *g = NULL;
    char err[256];
    *out = NULL;
    int rc = pi_gguf_open(path, &g, err, sizeof err);
    if (rc != 0) {
        pi_error("gpu index %s: %s", path, err);
        return rc;
    }
    int32_t *ids = malloc((size_t)n_layer * (size_t)n_ff * sizeof *ids); /* each layer's hot ids, from its flags */
    const int32_t **hot = calloc((size_t)n_layer, sizeof *hot);
    int64_t *n_hot = calloc((size_t)n_layer, sizeof *n_hot);
    struct pi_gguf_str arch = {0};
    uint64_t blocks = 0;
    if (!ids || !hot || !n_hot) {
        rc = -PI_ERR_NOMEM;
        goto done;
    }
    rc = -PI_ERR_FORMAT;
    if (pi_gguf_get_str(g, "general.architecture", &arch) != 0 || !pi_gguf_str_eq(arch, "generic.gpu_index")) {
        pi_error("gpu index %s: general.architecture is not \"generic.gpu_index\"", path);
        goto done;
    }
    /* Per layer by position, as PowerInfer reads them: its gpu_idx (I32[n_ff], 1 = on the GPU), then,
     * in files made for its GPU kernels, its gpu_bucket (I32[k], the ascending ids of those k neurons);
     * newer exports of dense models write gpu_idx alone. The hot set is taken from the flags; a
     * bucket, where present, must agree with them. */
    const uint64_t nt = pi_gguf_n_tensors(g);
    const int per = nt == 2 * (uint64_t)n_layer ? 2 : 1;
    if (pi_gguf_get_uint(g, "generic.gpu_index.block_count", &blocks) != 0 || blocks != (uint64_t)n_layer ||
        (nt != (uint64_t)n_layer && nt != 2 * (uint64_t)n_layer)) {
        pi_error("gpu index %s: made for %llu layers with %llu tensors; the model has %d layers (1 or 2 tensors each)", path,
                 (unsigned long long)blocks, (unsigned long long)nt, n_layer);
        goto done;
    }
    for (int il = 0; il < n_layer; il++) {
        const struct pi_gguf_tensor *idx = pi_gguf_tensor(g, (uint64_t)per * (uint64_t)il);
        const struct pi_gguf_tensor *bkt = per == 2 ? pi_gguf_tensor(g, 2 * (uint64_t)il + 1) : NULL;
        char want_idx[48], want_bkt[48];
        snprintf(want_idx, sizeof want_idx, "blk.%d.gpu_idx", il);
        snprintf(want_bkt, sizeof want_bkt, "blk.%d.gpu_bucket", il);
        if (!pi_gguf_str_eq(idx->name, want_idx) || idx->type != PI_TYPE_I32 || idx->n_dims != 1 || idx->ne[0] != (uint64_t)n_ff ||
            (bkt && (!pi_gguf_str_eq(bkt->name, want_bkt) || bkt->type != PI_TYPE_I32 || bkt->n_dims != 1 ||
                     bkt->ne[0] > (uint64_t)n_ff))) {
            pi_error("gpu index %s: layer %d's tensors are not %s I32[%d]%s", path, il, want_idx, n_ff,
                     bkt ? " and a gpu_bucket I32[k <= n_ff]" : "");
            goto done;
        }
        const int32_t *flag = idx->data;
        int32_t *h = ids + (size_t)il * (size_t)n_ff;
        int64_t on = 0;
        bool ok = true;
        for (int i = 0; ok && i < n_ff; i++) {
            ok = flag[i] == 0 || flag[i] == 1;
            if (flag[i] == 1) h[on++] = i;
        }
        if (ok && bkt) {
            const int32_t *b = bkt->data;
            ok = on == (int64_t)bkt->ne[0];
            for (int64_t j = 0; ok && j < on; j++) ok = b[j] == h[j];
        }
        if (!ok) {
            pi_error("gpu index %s: layer %d: gpu_idx flags are not all 0 or 1, or gpu_bucket is not the ascending ids "
                     "whose flag is 1", path, il);
            goto done;
        }
        hot[il] = h;
        n_hot[il] = on;
    }
    rc = pi_placement_new(n_layer, n_ff, n_workers, hot, n_hot, out);
done:
    free(ids);
    free(hot);
    free(n_hot);
    pi_gguf_destroy(&g);
    return rc;
}

int pi_placement_write_gpuidx(const struct pi_placement *p, const char *path, uint64_t vram_capacity)
{
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    int32_t *flag = malloc((size_t)p->n_ff * sizeof *flag);
    int rc = w && flag ? 0 : -PI_ERR_NOMEM;
    /* with a layer that has no hot neuron the file holds gpu_idx alone: a GGUF tensor cannot be empty */
    bool buckets = true;
    for (int il = 0; il < p->n_layer; il++) {
        int64_t n;
        pi_placement_hot(p, il, &n);
        buckets &= n > 0;
    }
    if (rc == 0) {
        pi_gguf_writer_set_flavour(w, PI_GGUF_FLAVOUR_POWERINFER);
        rc = pi_gguf_writer_set_str(w, "general.architecture", "generic.gpu_index");
    }
    if (rc == 0) rc = pi_gguf_writer_set_u32(w, "generic.gpu_index.block_count", (uint32_t)p->n_layer);
    if (rc == 0) rc = pi_gguf_writer_set_u64(w, "split.vram_capacity", vram_capacity);
    for (int il = 0; rc == 0 && il < p->n_layer; il++) {
        int64_t n;
        const int32_t *h = pi_placement_hot(p, il, &n);
        memset(flag, 0, (size_t)p->n_ff * sizeof *flag);
        for (int64_t j = 0; j < n; j++) flag[h[j]] = 1;
        char name[48];
        uint64_t ne[1] = {(uint64_t)p->n_ff};
        snprintf(name, sizeof name, "blk.%d.gpu_idx", il);
        rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_I32, 1, ne, flag);
        if (rc == 0 && buckets) { /* the hot ids ascending: the group as the map keeps it */
            snprintf(name, sizeof name, "blk.%d.gpu_bucket", il);
            ne[0] = (uint64_t)n;
            rc = pi_gguf_writer_add_tensor(w, name, PI_TYPE_I32, 1, ne, h);
        }
    }
    if (rc == 0) rc = pi_gguf_writer_write(w, path);
    if (rc != 0) pi_error("gpu index %s: not written (%s)", path, pi_err_str(rc));
    else if (!buckets) /* PowerInfer's loader wants two tensors a layer (../shared/powerinfer-formats.md) */
        pi_warn("gpu index %s: a layer has no hot neuron, so the file holds gpu_idx alone: pinfer reads it, "
                "PowerInfer's loader does not", path);
    pi_gguf_writer_destroy(&w);
    free(flag);
    return rc;
}
