/*
 * tests/unit/test-placement-map.c - the placement map (compute/placement.h) in every configuration:
 *   - random hot sets (fresh each run, seed printed): the groups of every layer are a partition of
 *     its ids, ascending within a group, the hot group exactly the given set, the cold ids split in
 *     nearly equal consecutive groups; the prefix rule is the same map with ids 0..k-1;
 *   - bad hot sets (repeated or out-of-range ids, cold neurons without CPU workers) are refused;
 *   - the wire form round-trips, and each hand-broken wire form is refused with -PI_ERR_FORMAT, as
 *     is every truncation; random byte mutations give either a refusal or a valid map, never more;
 *   - the memfd segment the coordinator shares round-trips, and a segment of another kind is refused;
 *   - PowerInfer's GPU index file (.gpuidx) is read as the hot sets it names, and broken ones
 *     (another architecture, layer count, a flag of 2, a bucket that disagrees) are refused;
 *   - byte accounting: the groups' bytes add up to the layer's FFN weights.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/placement.h"
#include "lib/common.h"
#include "lib/log.h"
#include "lib/rng.h"
#include "model/gguf.h"
#include "model/model.h"
#include "tests/tap.h"
#include "tests/test-pipeline-util.h"

static uint64_t rng;

static double urand(void) { return (double)(pi_rng_splitmix64(&rng) >> 11) / 9007199254740992.0; }

/* A random hot set per layer (density p of each layer, itself random when p < 0), in random order. */
static void random_hot(int L, int ff, double p, int32_t *ids, int64_t *n)
{
    for (int il = 0; il < L; il++) {
        const double q = p < 0 ? urand() : p;
        int32_t *h = ids + (size_t)il * (size_t)ff;
        n[il] = 0;
        for (int i = 0; i < ff; i++)
            if (urand() < q) h[n[il]++] = i;
        for (int64_t i = n[il] - 1; i > 0; i--) { /* shuffle: the map must not depend on the order given */
            int64_t j = (int64_t)(urand() * (double)(i + 1));
            int32_t t = h[i];
            h[i] = h[j], h[j] = t;
        }
    }
}

/* Every layer's groups: a partition of 0..ff-1, ascending in each group, group 0 = the given hot set,
 * cold groups consecutive and within one of each other in size. */
static int map_ok(const struct pi_placement *p, const int32_t *ids, const int64_t *n)
{
    const int ff = p->n_ff;
    unsigned char *seen = malloc((size_t)ff), *want = malloc((size_t)ff);
    int ok = seen && want;
    for (int il = 0; ok && il < p->n_layer; il++) {
        memset(seen, 0, (size_t)ff);
        memset(want, 0, (size_t)ff);
        for (int64_t i = 0; i < n[il]; i++) want[ids[(size_t)il * (size_t)ff + (size_t)i]] = 1;
        int64_t lo = INT64_MAX, hi = 0, prev_last = -1;
        for (int g = 0; g <= p->n_workers; g++) {
            int64_t c;
            const int32_t *grp = pi_placement_group(p, il, g, &c);
            for (int64_t j = 0; j < c; j++) {
                ok &= grp[j] >= 0 && grp[j] < ff && !seen[grp[j]] && (j == 0 || grp[j] > grp[j - 1]);
                ok &= g == 0 ? want[grp[j]] == 1 : want[grp[j]] == 0;
                seen[grp[j]] = 1;
            }
            if (g == 0) {
                ok &= c == n[il];
            } else {
                lo = PI_MIN(lo, c), hi = PI_MAX(hi, c);
                if (c > 0) { ok &= grp[0] > prev_last; prev_last = grp[c - 1]; }
            }
        }
        for (int i = 0; i < ff; i++) ok &= seen[i] == 1;
        if (p->n_workers > 0) ok &= hi - lo <= 1;
    }
    free(seen);
    free(want);
    return ok;
}

static int same_map(const struct pi_placement *a, const struct pi_placement *b)
{
    return a->n_layer == b->n_layer && a->n_ff == b->n_ff && a->n_workers == b->n_workers &&
           memcmp(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n_layer * (size_t)a->n_ff) == 0 &&
           memcmp(a->off, b->off, sizeof(int64_t) * (size_t)a->n_layer * (size_t)(a->n_workers + 2)) == 0;
}

static void put32(unsigned char *b, uint32_t v) { memcpy(b, &v, 4); }

static void test_wire(const struct pi_placement *p)
{
    const size_t len = pi_placement_wire_size(p);
    unsigned char *w = malloc(len), *c = malloc(len);
    char err[256];
    PI_ASSERT(w && c);
    pi_placement_to_wire(p, w);
    struct pi_placement *q = NULL;
    int rc = pi_placement_from_wire(w, len, p->n_layer, p->n_ff, p->n_workers, &q, err, sizeof err);
    tap_ok(rc == 0 && q && same_map(p, q), "wire form round-trips (%zu bytes)", len);
    pi_placement_destroy(&q);
    /* hand-broken forms: (offset, value) patches of a u32 */
    const size_t counts = 24, ids = counts + (size_t)p->n_layer * (size_t)(p->n_workers + 1) * 4;
    int64_t n0;
    pi_placement_group(p, 0, 0, &n0);
    struct { const char *what; size_t off; uint32_t v; } bad[] = {
        {"magic", 0, 0x4c504951u},
        {"version", 4, 2},
        {"layer count", 8, (uint32_t)p->n_layer + 1},
        {"neuron count", 12, (uint32_t)p->n_ff - 1},
        {"worker count", 16, (uint32_t)p->n_workers + 1},
        {"reserved field", 20, 1},
        {"a group larger than the layer", counts, (uint32_t)p->n_ff + 1},
        {"groups that do not add up", counts, (uint32_t)n0 + 1},
        {"an id out of range", ids, (uint32_t)p->n_ff},
        {"a negative id", ids, 0xffffffffu},
        {"a repeated id", ids + 4, 0}, /* the layer's second id set to the first's value 0 ... */
    };
    for (size_t k = 0; k < PI_ARRAY_LEN(bad); k++) {
        memcpy(c, w, len);
        put32(c + bad[k].off, bad[k].v);
        if (k == PI_ARRAY_LEN(bad) - 1) put32(c + ids, 0); /* ... and the first made 0 too */
        rc = pi_placement_from_wire(c, len, p->n_layer, p->n_ff, p->n_workers, &q, err, sizeof err);
        tap_ok(rc == -PI_ERR_FORMAT && !q, "wire form with %s refused: %s", bad[k].what, err);
    }
    /* a group not ascending: swap two ids of the hot group (n0 >= 2) */
    if (n0 >= 2) {
        memcpy(c, w, len);
        unsigned char t[4];
        memcpy(t, c + ids, 4), memcpy(c + ids, c + ids + 4, 4), memcpy(c + ids + 4, t, 4);
        rc = pi_placement_from_wire(c, len, p->n_layer, p->n_ff, p->n_workers, &q, err, sizeof err);
        tap_ok(rc == -PI_ERR_FORMAT, "wire form with a group out of order refused: %s", err);
    }
    int trunc_ok = 1;
    for (size_t cut = 0; cut < len; cut += 1 + cut / 3)
        trunc_ok &= pi_placement_from_wire(w, cut, p->n_layer, p->n_ff, p->n_workers, &q, err, sizeof err) == -PI_ERR_FORMAT;
    trunc_ok &= pi_placement_from_wire(NULL, 0, p->n_layer, p->n_ff, p->n_workers, &q, err, sizeof err) == -PI_ERR_FORMAT;
    tap_ok(trunc_ok, "every truncation of the wire form is refused");
    /* mutations: each result is a refusal or a map that passes the partition check */
    int mut_ok = 1, accepted = 0;
    for (int k = 0; k < 3000; k++) {
        memcpy(c, w, len);
        for (int j = 0, nj = 1 + (int)(urand() * 4); j < nj; j++) c[(size_t)(urand() * (double)len)] ^= (unsigned char)(1u << (int)(urand() * 8));
        rc = pi_placement_from_wire(c, len, p->n_layer, p->n_ff, p->n_workers, &q, err, sizeof err);
        if (rc == 0) {
            accepted++;
            int64_t *nh = malloc(sizeof(int64_t) * (size_t)q->n_layer);
            int32_t *h = malloc(sizeof(int32_t) * (size_t)q->n_layer * (size_t)q->n_ff);
            for (int il = 0; il < q->n_layer; il++) {
                const int32_t *g = pi_placement_hot(q, il, &nh[il]);
                memcpy(h + (size_t)il * (size_t)q->n_ff, g, sizeof(int32_t) * (size_t)nh[il]);
            }
            /* accepted forms are still partitions (the cold split may differ: only the hot set is checked) */
            unsigned char *seen = calloc((size_t)q->n_ff, 1);
            for (int il = 0; il < q->n_layer; il++) {
                memset(seen, 0, (size_t)q->n_ff);
                for (size_t i = 0; i < (size_t)q->n_ff; i++) {
                    int32_t id = q->ids[(size_t)il * (size_t)q->n_ff + i];
                    mut_ok &= id >= 0 && id < q->n_ff && !seen[id];
                    if (id >= 0 && id < q->n_ff) seen[id] = 1;
                }
            }
            free(seen), free(nh), free(h);
            pi_placement_destroy(&q);
        } else {
            mut_ok &= rc == -PI_ERR_FORMAT && !q;
        }
    }
    tap_ok(mut_ok, "3000 mutated wire forms: %d refused, %d accepted as valid partitions", 3000 - accepted, accepted);
    free(w);
    free(c);
}

static void test_segment(const struct pi_placement *p)
{
    pi_shm_t *shm = NULL;
    struct pi_placement *q = NULL;
    int rc = pi_placement_share(p, &shm);
    /* the mapper owns the fd it is given (a worker's inherited one): give it a copy of ours */
    if (rc == 0) rc = pi_placement_map_fd(dup(pi_shm_fd(shm)), p->n_layer, p->n_ff, p->n_workers, &q);
    tap_ok(rc == 0 && q && same_map(p, q), "the shared segment round-trips");
    pi_placement_destroy(&q);
    tap_ok(shm && pi_placement_map_fd(dup(pi_shm_fd(shm)), p->n_layer, p->n_ff, p->n_workers + 1, &q) == -PI_ERR_FORMAT && !q,
           "the segment is refused for another worker count");
    pi_shm_destroy(&shm);
    const uint64_t sz = 64;
    pi_shm_t *other = pi_shm_new("pinfer-test", PI_SHM_KIND_TEST, &sz, 1);
    tap_ok(other && pi_placement_map_fd(dup(pi_shm_fd(other)), p->n_layer, p->n_ff, p->n_workers, &q) != 0 && !q,
           "a segment of another kind is refused");
    pi_shm_destroy(&other);
}

/* A one-layer GPU index at path: general.architecture arch, blk.0.gpu_idx flag (I32[ff]) and
 * blk.0.gpu_bucket ids (I32[n]), whatever they hold (the reader is to judge them). */
static void write_one_layer(const char *path, const char *arch, const int32_t *flag, uint64_t ff, const int32_t *ids, uint64_t n)
{
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    const uint64_t ne[1] = {ff}, nb[1] = {n};
    PI_ASSERT(w && pi_gguf_writer_set_str(w, "general.architecture", arch) == 0 &&
              pi_gguf_writer_set_u32(w, "generic.gpu_index.block_count", 1) == 0 &&
              pi_gguf_writer_add_tensor(w, "blk.0.gpu_idx", PI_TYPE_I32, 1, ne, flag) == 0 &&
              pi_gguf_writer_add_tensor(w, "blk.0.gpu_bucket", PI_TYPE_I32, 1, nb, ids) == 0 &&
              pi_gguf_writer_write(w, path) == 0);
    pi_gguf_writer_destroy(&w);
}

static void test_gpuidx(const char *dir)
{
    enum { L = 3, FF = 200 };
    unsigned char hot[L * FF];
    for (int i = 0; i < L * FF; i++) hot[i] = urand() < 0.4;
    char path[512], err[64];
    (void)err;
    snprintf(path, sizeof path, "%s/good.gpuidx", dir);
    struct pi_placement *p = NULL;
    int rc = tp_write_gpuidx(path, L, FF, hot);
    if (rc == 0) rc = pi_placement_read_gpuidx(path, L, FF, 2, &p);
    int ok = rc == 0 && p;
    for (int il = 0; ok && il < L; il++) {
        int64_t n, k = 0;
        const int32_t *h = pi_placement_hot(p, il, &n);
        for (int i = 0; i < FF; i++)
            if (hot[il * FF + i]) ok &= k < n && h[k++] == i;
        ok &= k == n;
    }
    tap_ok(ok, ".gpuidx read as its hot sets (%d layers, 2 CPU workers)", L);
    pi_placement_destroy(&p);
    tap_ok(pi_placement_read_gpuidx(path, L + 1, FF, 2, &p) != 0 && !p, ".gpuidx refused for a model with another layer count");
    tap_ok(pi_placement_read_gpuidx(path, L, FF + 1, 2, &p) != 0 && !p, ".gpuidx refused for another neuron count");
    /* a file whose gpu_idx has a 2, one whose bucket disagrees with its flags, one of another
     * architecture */
    int32_t flag[FF], ids[FF];
    for (int i = 0; i < FF; i++) flag[i] = i < 10, ids[i] = i;
    flag[3] = 2;
    snprintf(path, sizeof path, "%s/flag2.gpuidx", dir);
    write_one_layer(path, "generic.gpu_index", flag, FF, ids, 10);
    tap_ok(pi_placement_read_gpuidx(path, 1, FF, 1, &p) != 0 && !p, ".gpuidx with a flag of 2 refused");
    flag[3] = 1;
    ids[9] = 150; /* flag 9 is set, 150 is not */
    snprintf(path, sizeof path, "%s/bucket.gpuidx", dir);
    write_one_layer(path, "generic.gpu_index", flag, FF, ids, 10);
    tap_ok(pi_placement_read_gpuidx(path, 1, FF, 1, &p) != 0 && !p, ".gpuidx whose bucket disagrees with its flags refused");
    ids[9] = 9;
    snprintf(path, sizeof path, "%s/arch.gpuidx", dir);
    write_one_layer(path, "llama", flag, FF, ids, 10);
    tap_ok(pi_placement_read_gpuidx(path, 1, FF, 1, &p) != 0 && !p, "a GGUF of another architecture refused as .gpuidx");
    /* gpu_idx alone (newer exports of dense models), with a layer that has no hot neuron */
    pi_gguf_writer_t *w = pi_gguf_writer_new();
    const uint64_t ne[1] = {FF};
    int32_t f2[2][FF];
    for (int i = 0; i < FF; i++) f2[0][i] = 0, f2[1][i] = (i % 3) == 0;
    pi_gguf_writer_set_str(w, "general.architecture", "generic.gpu_index");
    pi_gguf_writer_set_u32(w, "generic.gpu_index.block_count", 2);
    pi_gguf_writer_add_tensor(w, "blk.0.gpu_idx", PI_TYPE_I32, 1, ne, f2[0]);
    pi_gguf_writer_add_tensor(w, "blk.1.gpu_idx", PI_TYPE_I32, 1, ne, f2[1]);
    snprintf(path, sizeof path, "%s/flags-only.gpuidx", dir);
    pi_gguf_writer_write(w, path);
    pi_gguf_writer_destroy(&w);
    int64_t n0 = -1, n1 = -1;
    const int32_t *h1 = NULL;
    rc = pi_placement_read_gpuidx(path, 2, FF, 1, &p);
    if (rc == 0) pi_placement_hot(p, 0, &n0), h1 = pi_placement_hot(p, 1, &n1);
    tap_ok(rc == 0 && n0 == 0 && n1 == (FF + 2) / 3 && h1[0] == 0 && h1[1] == 3,
           ".gpuidx with gpu_idx alone: layer 0 has no hot neuron, layer 1 every third (%lld, %lld)", (long long)n0, (long long)n1);
    pi_placement_destroy(&p);
    /* pinfer's own export reads back as the same hot sets, with PowerInfer's magic; with a layer that
     * has no hot neuron it is written in the gpu_idx-only form */
    for (int form = 0; form < 2; form++) {
        struct pi_placement *src = NULL, *back = NULL;
        int32_t hid[3][FF];
        const int32_t *hp[3] = {hid[0], hid[1], hid[2]};
        int64_t hn[3] = {0, 0, 0};
        for (int il = 0; il < 3; il++)
            for (int i = 0; i < FF; i++)
                if (!(form == 1 && il == 2) && urand() < 0.3) hid[il][hn[il]++] = i;
        if (hn[0] == 0) hid[0][hn[0]++] = 7;
        if (hn[1] == 0) hid[1][hn[1]++] = 7;
        if (form == 0 && hn[2] == 0) hid[2][hn[2]++] = 7;
        snprintf(path, sizeof path, "%s/export%d.gpuidx", dir, form);
        int good = pi_placement_new(3, FF, 2, hp, hn, &src) == 0 && pi_placement_write_gpuidx(src, path, 12345) == 0 &&
                 pi_placement_read_gpuidx(path, 3, FF, 2, &back) == 0;
        for (int il = 0; good && il < 3; il++) {
            int64_t a, b;
            const int32_t *x = pi_placement_hot(src, il, &a), *y = pi_placement_hot(back, il, &b);
            good = a == b && memcmp(x, y, sizeof(int32_t) * (size_t)a) == 0;
        }
        char magic[4] = {0};
        FILE *fm = fopen(path, "rb");
        if (fm) {
            good &= fread(magic, 1, 4, fm) == 4 && memcmp(magic, "PWRI", 4) == 0;
            fclose(fm);
        }
        pi_gguf_t *gg = NULL;
        uint64_t cap = 0;
        good &= pi_gguf_open(path, &gg, NULL, 0) == 0 && pi_gguf_get_uint(gg, "split.vram_capacity", &cap) == 0 && cap == 12345 &&
              pi_gguf_n_tensors(gg) == (form == 0 ? 6u : 3u);
        pi_gguf_destroy(&gg);
        tap_ok(good, "pinfer's .gpuidx export (%s) reads back as the same hot sets, magic PWRI, vram_capacity kept",
               form == 0 ? "gpu_idx and gpu_bucket" : "a layer with none hot: gpu_idx alone");
        pi_placement_destroy(&src);
        pi_placement_destroy(&back);
    }
    snprintf(path, sizeof path, "%s/missing.gpuidx", dir);
    tap_ok(pi_placement_read_gpuidx(path, 1, FF, 1, &p) != 0 && !p, "a missing .gpuidx is an error");
}

int main(void)
{
    pi_log_set_level(PI_LOG_ERROR);
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    rng = seed;
    tap_diag("seed %llu", (unsigned long long)seed);
    enum { L = 5, FF = 300 };
    int32_t *ids = malloc(sizeof(int32_t) * L * FF);
    int64_t n[L];
    PI_ASSERT(ids);
    for (int W = 1; W <= 4; W++) {
        random_hot(L, FF, -1, ids, n);
        n[0] = 0;      /* a layer with nothing hot */
        n[1] = FF;     /* and one with everything hot */
        for (int i = 0; i < FF; i++) ids[FF + i] = FF - 1 - i;
        const int32_t *hot[L];
        for (int il = 0; il < L; il++) hot[il] = ids + (size_t)il * FF;
        struct pi_placement *p = NULL;
        int rc = pi_placement_new(L, FF, W, hot, n, &p);
        tap_ok(rc == 0 && map_ok(p, ids, n), "random hot sets, %d CPU workers: a partition with the given hot sets", W);
        if (W == 3 && p) {
            test_wire(p);
            test_segment(p);
        }
        pi_placement_destroy(&p);
    }
    /* the prefix rule is the map of ids 0..k-1 */
    struct pi_placement *a = NULL, *b = NULL;
    for (int i = 0; i < L * FF; i++) ids[i] = i % FF;
    for (int il = 0; il < L; il++) n[il] = 120;
    const int32_t *hot[L];
    for (int il = 0; il < L; il++) hot[il] = ids + (size_t)il * FF;
    tap_ok(pi_placement_prefix(L, FF, 2, 120, &a) == 0 && pi_placement_new(L, FF, 2, hot, n, &b) == 0 && same_map(a, b) &&
               pi_placement_hot_total(a) == 120 * L && pi_placement_hot_max(a) == 120,
           "the prefix rule is the map of ids 0..k-1");
    pi_placement_destroy(&a);
    pi_placement_destroy(&b);
    /* bad hot sets */
    ids[1] = ids[0];
    tap_ok(pi_placement_new(L, FF, 2, hot, n, &a) == -PI_ERR_INVAL && !a, "a repeated hot id is refused");
    ids[1] = FF;
    tap_ok(pi_placement_new(L, FF, 2, hot, n, &a) == -PI_ERR_INVAL && !a, "an out-of-range hot id is refused");
    ids[1] = 1;
    tap_ok(pi_placement_new(L, FF, 0, hot, n, &a) == -PI_ERR_INVAL && !a, "cold neurons without CPU workers are refused");
    tap_ok(pi_placement_prefix(L, FF, 0, FF, &a) == 0 && a, "every neuron hot needs no CPU worker");
    pi_placement_destroy(&a);
    tap_ok(pi_placement_prefix(L, FF, PI_PLACEMENT_MAX_WORKERS + 1, 0, &a) == -PI_ERR_INVAL, "more CPU workers than the exchange takes are refused");
    /* byte accounting on the demo model */
    char path[1024], err[256];
    tap_data(path, sizeof path, "demo-relu-q4_0.gguf");
    pi_model_t *m = NULL;
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true;
    if (pi_model_open(path, &mo, &m, err, sizeof err) != 0) tap_bail("cannot open the demo model: %s", err);
    {
        struct pi_placement *p = NULL;
        int rc = pi_placement_prefix(m->hp.n_layer, m->hp.n_ff, 3, 300, &p);
        const struct pi_layer *L0 = &m->layers[0];
        uint64_t down;
        pi_type_row_bytes(L0->ffn_down.type, (uint64_t)m->hp.n_embd, &down);
        const uint64_t per = L0->ffn_gate.row_bytes + L0->ffn_up.row_bytes + down;
        uint64_t sum = 0;
        for (int g = 0; p && g <= 3; g++) sum += pi_placement_bytes(p, m, 0, g);
        tap_ok(rc == 0 && pi_placement_bytes(p, m, 0, 0) == 300 * per && sum == (uint64_t)m->hp.n_ff * per,
               "bytes: 300 hot neurons of layer 0 are %llu bytes, the groups add up to the layer's %llu",
               (unsigned long long)pi_placement_bytes(p, m, 0, 0), (unsigned long long)((uint64_t)m->hp.n_ff * per));
        pi_placement_destroy(&p);
    }
    pi_model_destroy(&m);
    char dir[] = "/tmp/pi-test-placement-map.XXXXXX";
    if (!mkdtemp(dir)) tap_bail("mkdtemp");
    test_gpuidx(dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) tap_diag("could not remove %s", dir);
    free(ids);
    return tap_done();
}
