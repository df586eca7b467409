/*
 * tests/unit/test-placement.c - the cuda backend's VRAM plan (compute/backend-cuda-plan.h) and the
 * placement that uses it (compute/placement.h). Needs no GPU and no CUDA: the plan is host C.
 *
 * First the plan against known figures: tests/data/cuda-plan.golden holds the plan of 400 inputs as
 * the code computed them before the plan moved out of the backend into host C of its own (and one
 * deliberate change since, which the file's header explains); each must come out to the byte (built in
 * every configuration). Then the weight types the device keeps in their own format and the bytes the
 * plan counts for each. Then, where the cuda backend is built, the
 * placement: for budgets around the plan's figures on the demo model and the tiny llama, the hot
 * count is the largest whose plan fits: the plan of k fits the budget and the plan of k + 1 does not
 * (every neuron when the all-dense plan fits, none when not even the weights every token needs fit).
 * The plans are made here the way pi-gpu-worker will make them.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compute/backend-cuda-plan.h"
#include "compute/placement.h"
#include "kernels/cuda/plan.h"
#include "lib/common.h"
#include "model/model.h"
#include "tests/tap.h"

#define N_CTX 256
#define MAX_TOKENS 64

static const pi_model_t *M;
static int32_t *ids;
static const int32_t **hot;
static int64_t *nh;
static struct pi_layer *hl;

/* Open tests/data/file as the coordinator does and set up hot ids 0.. and packed rows for it (M, ids,
 * hot, nh, hl); close_model frees them. */
static pi_model_t *open_model(const char *file)
{
    char path[1024], err[256];
    struct pi_model_opts mo;
    pi_model_opts_default(&mo);
    mo.no_down_t = true; /* as the coordinator opens it */
    pi_model_t *m = NULL;
    if (pi_model_open(tap_data(path, sizeof path, file), &mo, &m, err, sizeof err) != 0) tap_bail("%s: %s", file, err);
    M = m;
    const int64_t ff = m->hp.n_ff;
    ids = malloc((size_t)ff * sizeof *ids);
    hot = calloc((size_t)m->hp.n_layer, sizeof *hot);
    nh = calloc((size_t)m->hp.n_layer, sizeof *nh);
    hl = calloc((size_t)m->hp.n_layer, sizeof *hl);
    PI_ASSERT(ids && hot && nh && hl);
    for (int64_t i = 0; i < ff; i++) ids[i] = (int32_t)i;
    for (int il = 0; il < m->hp.n_layer; il++) {
        hot[il] = ids;
        hl[il] = m->layers[il];
        hl[il].ffn_down_t.type = pi_model_down_t_type(PI_TYPE_COUNT, m->layers[il].ffn_down.type, m->hp.n_embd);
    }
    return m;
}

static void close_model(pi_model_t **m)
{
    free(ids), free(hot), free(nh), free(hl);
    pi_model_destroy(m);
}

/* Every line of tests/data/cuda-plan.golden, the plan's figure to the byte (the models opened once). */
static void check_golden(void)
{
    char path[1024], line[256], file[64], cur[64] = "";
    FILE *f = fopen(tap_data(path, sizeof path, "cuda-plan.golden"), "r");
    if (!f) tap_bail("cannot open %s", path);
    pi_model_t *m = NULL;
    int n = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        long long k, bytes;
        int mixed, T, ctx, seq;
        if (line[0] == '#') continue;
        if (sscanf(line, "%63s %lld %d %d %d %d %lld", file, &k, &mixed, &T, &ctx, &seq, &bytes) != 7) tap_bail("bad line: %s", line);
        if (strcmp(file, cur) != 0) {
            if (m) close_model(&m);
            m = open_model(file);
            snprintf(cur, sizeof cur, "%s", file);
        }
        /* the file's figures are those of a build whose batches of 3..32 tokens take the integer GEMM
         * (every CUDA_ARCHS entry sm_80 or later, kernels/cuda/plan.h); a build for older cards counts
         * the f16 tile there */
        if (T > 2 && T <= PI_CUDA_MMQ_MAX_T && !pi_cuda_mmq_built(PI_TYPE_Q4_0)) {
            n++;
            continue;
        }
        for (int il = 0; il < m->hp.n_layer; il++) nh[il] = k;
        if (mixed) nh[0] = m->hp.n_ff;
        /* the figures of a plan without prompt streaming (check_stream adds it) */
        struct pi_backend_opts o = {.n_ctx = ctx, .n_seq = seq, .max_tokens = T, .hot = hot, .n_hot = nh, .hot_layers = hl,
                                    .tune = {.prompt_stream = PI_TUNE_PROMPT_STREAM_OFF}};
        uint64_t got = 0;
        int rc = pi_backend_cuda_plan(m, &o, &got);
        if (rc != 0 || got != (uint64_t)bytes) {
            if (bad++ < 10) tap_diag("%s k %lld%s T %d ctx %d seq %d: %llu bytes, want %lld (rc %d)", file, k,
                                     mixed ? " (layer 0 dense)" : "", T, ctx, seq, (unsigned long long)got, bytes, rc);
        }
        n++;
    }
    fclose(f);
    if (m) close_model(&m);
    tap_ok(n == 400 && bad == 0, "the VRAM plan gives all %d known figures to the byte (%d differ)", n, bad);
    struct pi_backend_opts o = {.n_ctx = 16, .n_seq = 1, .max_tokens = 0};
    uint64_t b = 1;
    m = open_model("demo-relu-q4_0.gguf");
    tap_ok(pi_backend_cuda_plan(m, &o, &b) == -PI_ERR_INVAL && b == 0, "a plan for batches of 0 rows is refused");
    for (int il = 0; il < m->hp.n_layer; il++) nh[il] = il == 2 ? m->hp.n_ff + 1 : 1;
    o.max_tokens = 4, o.hot = hot, o.n_hot = nh;
    tap_ok(pi_backend_cuda_plan(m, &o, &b) == -PI_ERR_RANGE, "a plan with more hot neurons than the layer has is refused");
    close_model(&m);
}

/* Prompt streaming's part of the plan (compute/backend-cuda-plan.h): with auto or on and a layer with cold
 * neurons, two slots of the largest cold layer's ffn_gate, ffn_up and ffn_down images plus the products'
 * (T, 2 n_ff) f32 buffer, and nothing else changes but the scratch (the streamed GEMMs' tile and input);
 * off, activation thresholds, every neuron hot, one-row batches or predictors: no streaming part at all. */
static void check_stream(void)
{
    pi_model_t *m = open_model("demo-relu-q4_0.gguf");
    const int L = m->hp.n_layer;
    const int64_t ff = m->hp.n_ff, d = m->hp.n_embd;
    for (int il = 0; il < L; il++) nh[il] = ff / 2;
    struct pi_backend_opts o = {.n_ctx = 64, .n_seq = 1, .max_tokens = 64, .hot = hot, .n_hot = nh, .hot_layers = hl,
                                .tune = {.prompt_stream = PI_TUNE_PROMPT_STREAM_OFF}};
    struct pi_backend_cuda_plan off, on, au;
    int rc = pi_backend_cuda_plan_parts(m, &o, &off);
    o.tune.prompt_stream = PI_TUNE_PROMPT_STREAM_ON;
    rc |= pi_backend_cuda_plan_parts(m, &o, &on);
    o.tune.prompt_stream = PI_TUNE_PROMPT_STREAM_AUTO;
    rc |= pi_backend_cuda_plan_parts(m, &o, &au);
    size_t g = 0, u = 0, dn = 0;
    const struct pi_layer *Ly = &m->layers[0];
    pi_cuda_weight_bytes_for((int)Ly->ffn_gate.type, ff, d, &g);
    pi_cuda_weight_bytes_for((int)Ly->ffn_up.type, ff, d, &u);
    pi_cuda_weight_bytes_for((int)Ly->ffn_down.type, d, ff, &dn);
    const uint64_t want = 2 * (uint64_t)(g + u + dn) + pi_cuda_counted(64 * 2 * (uint64_t)ff * sizeof(float));
    tap_ok(rc == 0 && off.stream == 0 && on.stream == want && au.stream == want && on.total == au.total &&
               pi_backend_cuda_stream_slot(m, &o) == g + u + dn,
           "prompt streaming: off holds nothing, on and auto two slots of %zu bytes and the products' buffer (%llu bytes)",
           g + u + dn, (unsigned long long)on.stream);
    tap_ok(on.attn == off.attn && on.hot == off.hot && on.kv == off.kv && on.act == off.act && on.pred == off.pred &&
               on.scratch >= off.scratch && on.total == off.total + on.stream + (on.scratch - off.scratch),
           "prompt streaming changes only its own part and the scratch (+%llu bytes)",
           (unsigned long long)(on.scratch - off.scratch));
    /* activation thresholds (a SwiGLU model's [sparsity] gates): the loop never streams such a run
     * (pi_stream_policy_mode), so the plan holds no stream part for it, only the thresholds' own: each
     * layer's hot thresholds (n_hot floats), the per-row lists, counts and activations (4 rows of the
     * largest hot count) and the per-layer counters (compute/backend-cuda-plan.h, part gate) */
    /* ... with [tune] cuda_hot_thresholds on; off (the default) the hot neurons are dense: no gate part */
    struct pi_backend_cuda_plan th, thd;
    o.thresholds = true;
    rc = pi_backend_cuda_plan_parts(m, &o, &thd);
    o.tune.cuda_hot_thresholds = PI_TUNE_CUDA_HOT_THRESHOLDS_ON;
    rc |= pi_backend_cuda_plan_parts(m, &o, &th);
    const bool th_on = pi_backend_cuda_stream_on(m, &o);
    o.thresholds = false, o.tune.cuda_hot_thresholds = PI_TUNE_CUDA_HOT_THRESHOLDS_OFF;
    uint64_t gate = pi_cuda_counted((uint64_t)L * sizeof(uint64_t));
    for (int il = 0; il < L; il++) gate += pi_cuda_counted((uint64_t)nh[il] * sizeof(float));
    gate += 2 * pi_cuda_counted(4 * (uint64_t)(ff / 2) * 4) + pi_cuda_counted(4 * 4);
    tap_ok(rc == 0 && !th_on && th.stream == 0 && th.scratch == off.scratch && th.gate == gate && off.gate == 0 &&
               th.total == off.total + gate,
           "prompt streaming with activation thresholds (auto): no stream part, the plan of off (%llu bytes) and the "
           "thresholds' %llu (computed here: %llu)", (unsigned long long)off.total, (unsigned long long)th.gate,
           (unsigned long long)gate);
    tap_ok(rc == 0 && thd.stream == 0 && thd.gate == 0 && thd.total == off.total,
           "activation thresholds with [tune] cuda_hot_thresholds off: no gate part, the plan of off (%llu bytes)",
           (unsigned long long)thd.total);
    o.tune.prompt_stream = PI_TUNE_PROMPT_STREAM_ON;
    o.max_tokens = 1;
    bool one = pi_backend_cuda_stream_on(m, &o);
    o.max_tokens = 64;
    for (int il = 0; il < L; il++) nh[il] = ff;
    bool all_hot = pi_backend_cuda_stream_on(m, &o);
    tap_ok(!one && !all_hot && pi_backend_cuda_stream_on(m, &(struct pi_backend_opts){.max_tokens = 64}),
           "no streaming for batches of one row or with every neuron hot; with none hot it is on");
    close_model(&m);
}

/* The weight types the device keeps in their own format (issue 15) and the bytes a block of each
 * holds there (kernels/cuda/cuda-impl.h): the quant plane's, plus the side plane's where split. Q5_0
 * takes 24 bytes for ggml's 22 (an 8-byte side entry {d, 0, qh}), Q3_K 112 for 110 (two zero bytes). */
static const struct {
    enum pi_type t;
    int64_t belems, qbytes, sbytes;
} dev_types[] = {
    {PI_TYPE_F16, 1, 2, 0},      {PI_TYPE_BF16, 1, 2, 0},     {PI_TYPE_Q4_0, 32, 16, 2},   {PI_TYPE_Q4_1, 32, 16, 4},
    {PI_TYPE_Q5_0, 32, 16, 8},   {PI_TYPE_Q5_1, 32, 16, 8},   {PI_TYPE_Q8_0, 32, 32, 2},   {PI_TYPE_Q2_K, 256, 80, 4},
    {PI_TYPE_Q3_K, 256, 112, 0}, {PI_TYPE_Q4_K, 256, 144, 0}, {PI_TYPE_Q5_K, 256, 176, 0}, {PI_TYPE_Q6_K, 256, 208, 2},
};

/* Each type stays itself on the device (pi_backend_cuda_dev_type) where its rows are whole blocks and
 * F16 where not, and the plan counts its stored bytes: the quant plane rounded to 256, the side plane,
 * the whole rounded to 256 (pi_cuda_weight_bytes_for). */
static void check_dev_types(void)
{
    const int64_t rows = 333, cols = 4096;
    int bad = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(dev_types); i++) {
        const enum pi_type t = dev_types[i].t;
        const uint64_t nb = (uint64_t)(rows * cols / dev_types[i].belems);
        const uint64_t want =
            pi_cuda_counted(pi_cuda_counted(nb * (uint64_t)dev_types[i].qbytes) + nb * (uint64_t)dev_types[i].sbytes);
        size_t got = 0;
        const int rc = pi_cuda_weight_bytes_for((int)t, rows, cols, &got);
        const bool odd_ok = dev_types[i].belems == 256 ? pi_backend_cuda_dev_type(t, 4064) == PI_TYPE_F16
                                                       : pi_backend_cuda_dev_type(t, 4064) == t;
        if (rc != 0 || got != want || pi_backend_cuda_dev_type(t, cols) != t || !odd_ok) {
            bad++;
            tap_diag("%s: rc %d, %zu bytes, want %llu; device type %s", pi_type_name(t), rc, got,
                     (unsigned long long)want, pi_type_name(pi_backend_cuda_dev_type(t, cols)));
        }
    }
    tap_ok(bad == 0,
           "%zu weight types' device layouts counted, each kept in its own format (%d wrong)",
           PI_ARRAY_LEN(dev_types), bad);
    size_t b = 0;
    tap_ok(pi_backend_cuda_dev_type(PI_TYPE_F32, cols) == PI_TYPE_F16 &&
               pi_cuda_weight_bytes_for(PI_TYPE_F32, rows, cols, &b) == -PI_ERR_UNSUPPORTED,
           "F32 goes up as F16; the device layout refuses F32 itself");
}

#ifdef PI_HAVE_CUDA
static uint64_t plan(int64_t k)
{
    uint64_t bytes = 0;
    for (int il = 0; il < M->hp.n_layer; il++) nh[il] = k;
    struct pi_backend_opts o = {.n_ctx = N_CTX, .n_seq = 1, .max_tokens = MAX_TOKENS, .hot = hot, .n_hot = nh,
                                .hot_layers = hl};
    PI_ASSERT(pi_backend_cuda_plan(M, &o, &bytes) == 0);
    return bytes;
}

static void check_model(const char *file)
{
    pi_model_t *m = open_model(file);
    const int64_t ff = m->hp.n_ff;
    const uint64_t p0 = plan(0), pmid = plan(ff / 3), plast = plan(ff - 1), pall = plan(ff);
    tap_ok(p0 < pmid && pmid < plast, "%s: the plan grows with the hot count (%llu, %llu, %llu bytes)", file,
           (unsigned long long)p0, (unsigned long long)pmid, (unsigned long long)plast);
    const uint64_t budgets[] = {p0 - 1, p0, p0 + 1, (p0 + pmid) / 2, pmid, pmid + 1, plast - 1, plast, pall, pall - 1,
                                (uint64_t)1 << 40};
    int bad = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(budgets); i++) {
        struct pi_config c;
        memset(&c, 0, sizeof c);
        c.gpu_backend = PI_GPU_CUDA;
        c.vram_budget = budgets[i];
        const int64_t k = pi_placement_hot_count(&c, m, N_CTX, 1, MAX_TOKENS, NULL);
        bool ok;
        if (k == ff) ok = pall <= budgets[i];
        else if (k == 0) ok = pall > budgets[i] && (p0 > budgets[i] || plan(1) > budgets[i]);
        else ok = pall > budgets[i] && plan(k) <= budgets[i] && (k + 1 == ff ? pall : plan(k + 1)) > budgets[i];
        if (!ok) bad++, tap_diag("%s: budget %llu: %lld hot neurons", file, (unsigned long long)budgets[i], (long long)k);
    }
    tap_ok(bad == 0, "%s: for %zu budgets around the plan, the hot count is the largest that fits (all-dense %llu bytes)",
           file, PI_ARRAY_LEN(budgets), (unsigned long long)pall);
    close_model(&m);
}
#endif

/* The host side of prompt streaming's upload (pi_cuda_weight_pack_rows): for every device type, random
 * ggml blocks packed as one range and as three disjoint ranges give the same image; each block's quant
 * bytes sit in the quant plane and its side pieces in the side plane at the rounded quant plane's end
 * (the layout pi_cuda_weight_upload writes, kernels/cuda/plan.h); every pad byte of a block is written
 * zero over staging that held other bytes (the images start filled with 0xA5, as a staging buffer
 * reused from another layer): the quant entry's tail and the side entry's bytes no piece covers, as many
 * as the device block has over ggml's (Q5_0's bytes 2-3 of its 8-byte side entry, Q3_K's two); rows
 * outside the weight are refused. */
static void check_pack(void)
{
    const int64_t rows = 7;
    int bad = 0;
    const uint64_t seed = 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
    uint64_t st = seed;
    tap_diag("check_pack: seed %llu", (unsigned long long)seed);
    for (size_t i = 0; i < PI_ARRAY_LEN(dev_types); i++) {
        const enum pi_type t = dev_types[i].t;
        const int64_t cols = dev_types[i].belems == 256 ? 512 : 96, nblk = cols / dev_types[i].belems;
        struct pi_cuda_geom g;
        size_t qplane = 0, dplane = 0, bytes = 0;
        if (pi_cuda_weight_planes((int)t, rows, cols, &g, &qplane, &dplane) != 0 ||
            pi_cuda_weight_bytes_for((int)t, rows, cols, &bytes) != 0) {
            bad++;
            continue;
        }
        const size_t srcb = (size_t)(rows * nblk) * g.bbytes;
        uint8_t *src = malloc(srcb), *a = malloc(bytes), *b = malloc(bytes);
        PI_ASSERT(src && a && b);
        memset(a, 0xA5, bytes);
        memset(b, 0xA5, bytes);
        for (size_t k = 0; k < srcb; k++) src[k] = (uint8_t)((st = st * 6364136223846793005ull + 1442695040888963407ull) >> 56);
        int rc = pi_cuda_weight_pack_rows((int)t, rows, cols, src, 0, rows, a);
        rc |= pi_cuda_weight_pack_rows((int)t, rows, cols, src, 0, 2, b);
        rc |= pi_cuda_weight_pack_rows((int)t, rows, cols, src, 2, 4, b);
        rc |= pi_cuda_weight_pack_rows((int)t, rows, cols, src, 6, 1, b);
        bool ok = rc == 0 && memcmp(a, b, bytes) == 0 && pi_cuda_weight_pack_rows((int)t, rows, cols, src, 5, 3, b) == -PI_ERR_RANGE;
        size_t pad = 0; /* pad bytes of one block, checked zero */
        for (int64_t k = 0; ok && k < rows * nblk; k++) {
            const uint8_t *blk = src + (size_t)k * g.bbytes, *q = a + (size_t)k * g.qbytes, *d = a + qplane + (size_t)k * g.sbytes;
            ok = memcmp(q, blk + g.qoff, g.qlen) == 0;
            pad = g.qbytes - g.qlen;
            for (size_t z = g.qlen; ok && z < g.qbytes; z++) ok = q[z] == 0;
            for (int p = 0; ok && p < g.n_side; p++) ok = memcmp(d + g.side[p].dst, blk + g.side[p].src, g.side[p].len) == 0;
            for (size_t z = 0; ok && z < g.sbytes; z++) { /* a side byte no piece covers is padding */
                bool covered = false;
                for (int p = 0; p < g.n_side; p++) covered |= z >= g.side[p].dst && z < g.side[p].dst + g.side[p].len;
                if (!covered) pad++, ok = d[z] == 0;
            }
        }
        /* every byte of ggml's block lands once: the device block's surplus is its padding */
        const size_t want_pad = (size_t)(dev_types[i].qbytes + dev_types[i].sbytes) - g.bbytes;
        if (!ok || pad != want_pad) {
            bad++;
            tap_diag("%s: the packed image differs, or %zu pad bytes a block (want %zu; rc %d)", pi_type_name(t), pad,
                     want_pad, rc);
        }
        free(src);
        free(a);
        free(b);
    }
    tap_ok(bad == 0,
           "prompt streaming's pack: %zu device types, one range and three give the image upload writes, pads zeroed "
           "over stale staging (%d wrong)",
           PI_ARRAY_LEN(dev_types), bad);
}

int main(void)
{
    check_golden();
    check_pack();
    check_stream();
    check_dev_types();
#ifdef PI_HAVE_CUDA
    check_model("demo-relu-q4_0.gguf");
    check_model("tiny-llama-q4_0.gguf");
#else
    tap_diag("built without the cuda backend: the placement checks need it (the plan's are above)");
#endif
    return tap_done();
}
