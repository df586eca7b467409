/*
 * tools/pi-gen-model.c - writes a llama-family GGUF with random weights and real shapes, for
 * benchmarks and tests that need a model larger than the fixtures (pi_model_gen_write in
 * model/model-gen.h).
 * The output has no tokenizer (feed it token ids) unless --vocab-from copies one from another GGUF.
 *
 *   pi-gen-model --preset 1b --type q4_0 /tmp/rand-1b-q4_0.gguf
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "lib/common.h"
#include "lib/log.h"
#include "model/model-gen.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: pi-gen-model [options] OUT.gguf\n"
            "Write a llama-family model with random weights (no tokenizer unless --vocab-from).\n\n"
            "  --preset NAME    shape preset: 70b (n_embd 8192, n_ff 28672, 80 layers, 64 heads, 8 kv heads,\n"
            "                   vocab 32000), 13b (5120, 13824, 40, 40, 40, 32000), 7b (4096, 11008, 32, 32,\n"
            "                   32, 32000), 1b (2048, 5632, 22, 32, 4, 32000), demo (256, 1024, 8, 8, 4, 8192),\n"
            "                   tiny (64, 256, 4, 4, 2, 32000) (default: 1b)\n"
            "  --type T         weight type: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 (default: q4_0)\n"
            "  --output-type T  type of output.weight (default: q8_0 for 4- and 5-bit types, else --type)\n"
            "  --embd N --ff N --layers N --heads N --kv-heads N --vocab N --ctx N   override the preset\n"
            "  --vocab-from F   copy the tokenizer (every tokenizer.* key) of the GGUF F, such as llama.cpp's\n"
            "                   ggml-vocab-llama-spm.gguf, so llama.cpp and PowerInfer load the model; the\n"
            "                   vocabulary size becomes F's token count\n"
            "  --act A          write pinfer.ffn_activation = silu, relu or drelu (default: none, i.e. silu)\n"
            "  --tied           no output.weight (tied to token_embd)\n"
            "  --down-t         also write blk.N.ffn_down_t.weight, ffn_down transposed (pinfer's own files:\n"
            "                   both tensors)\n"
            "  --pred-rank R    also write predictors blk.N.fc1/fc2 of rank R (default: 0, none)\n"
            "  --locality       ReLU neurons with known activation rates (doc/locality.md): channel n_embd-1\n"
            "                   holds a constant that the gate weights turn into a bias per neuron\n"
            "  --sparsity S     with --locality: mean share of inactive neurons per layer (default: 0.9)\n"
            "  --hot-share H    with --locality: share of neurons carrying 80%% of activations (default: 0.26)\n"
            "  --gate-rank R    with --locality: gate matrices of rank R, so that predictors of rank about 2R\n"
            "                   can foresee which neurons fire (default: 0, full rank: they cannot)\n"
            "  --pred-exact     with --gate-rank R: predictors of rank 2R+1 made from the gate's factors, which\n"
            "                   foresee every firing neuron up to the gate's quantisation (for speed measurements)\n"
            "  --powerinfer     PowerInfer's layout: magic PWRI, blk.N.ffn_down_t instead of blk.N.ffn_down (as\n"
            "                   PowerInfer's loader requires; the same weights as without it), add --pred-rank\n"
            "                   or --pred-exact for fc1/fc2\n"
            "  --seed N         random seed (default: 1)\n"
            "  -h, --help       this text\n");
}

static int parse_int(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0 || v > (1L << 30)) return -1;
    *out = (int)v;
    return 0;
}

/* A number strictly between 0 and 1. */
static int parse_frac(const char *s, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !(v > 0.0 && v < 1.0)) return -1;
    *out = (float)v;
    return 0;
}

/* A --type or --output-type value: one of the weight types --help lists (f32 f16 bf16 q8_0 q4_0 q4_1
 * q5_0 q5_1), the ones the writer quantises to. */
static bool gen_type(const char *name, enum pi_type *t)
{
    static const enum pi_type ok[] = {PI_TYPE_F32,  PI_TYPE_F16,  PI_TYPE_BF16, PI_TYPE_Q8_0,
                                      PI_TYPE_Q4_0, PI_TYPE_Q4_1, PI_TYPE_Q5_0, PI_TYPE_Q5_1};
    if (!pi_type_from_name(name, t)) return false;
    for (size_t i = 0; i < PI_ARRAY_LEN(ok); i++)
        if (*t == ok[i]) return pi_quantize_supported(*t);
    return false;
}

int main(int argc, char **argv)
{
    enum { O_PRESET = 256, O_TYPE, O_OTYPE, O_EMBD, O_FF, O_LAYERS, O_HEADS, O_KV, O_VOCAB, O_CTX, O_ACT,
           O_TIED, O_DOWNT, O_RANK, O_SEED, O_LOC, O_SPARSITY, O_SHARE, O_PWRI, O_VOCAB_FROM, O_GATE_RANK,
           O_PRED_EXACT };
    static const struct option opts[] = {
        {"preset", 1, 0, O_PRESET}, {"type", 1, 0, O_TYPE}, {"output-type", 1, 0, O_OTYPE},
        {"embd", 1, 0, O_EMBD}, {"ff", 1, 0, O_FF}, {"layers", 1, 0, O_LAYERS}, {"heads", 1, 0, O_HEADS},
        {"kv-heads", 1, 0, O_KV}, {"vocab", 1, 0, O_VOCAB}, {"ctx", 1, 0, O_CTX}, {"act", 1, 0, O_ACT},
        {"tied", 0, 0, O_TIED}, {"down-t", 0, 0, O_DOWNT}, {"pred-rank", 1, 0, O_RANK}, {"seed", 1, 0, O_SEED},
        {"locality", 0, 0, O_LOC}, {"sparsity", 1, 0, O_SPARSITY}, {"hot-share", 1, 0, O_SHARE},
        {"powerinfer", 0, 0, O_PWRI}, {"vocab-from", 1, 0, O_VOCAB_FROM}, {"gate-rank", 1, 0, O_GATE_RANK},
        {"pred-exact", 0, 0, O_PRED_EXACT},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0},
    };
    struct pi_model_gen g = {0};
    bool out_type_set = false;
    int c, bad = 0;
    pi_log_set_program("pi-gen-model");
    pi_model_gen_preset("1b", &g);
    g.type = PI_TYPE_Q4_0;
    g.seed = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_PRESET: bad |= pi_model_gen_preset(optarg, &g) != 0; break;
        /* the list of --help: the weight types the writer quantises to (no K-quants, no activation types) */
        case O_TYPE: bad |= !gen_type(optarg, &g.type); break;
        case O_OTYPE:
            bad |= !gen_type(optarg, &g.out_type);
            out_type_set = true;
            break;
        case O_EMBD: bad |= parse_int(optarg, &g.n_embd); break;
        case O_FF: bad |= parse_int(optarg, &g.n_ff); break;
        case O_LAYERS: bad |= parse_int(optarg, &g.n_layer); break;
        case O_HEADS: bad |= parse_int(optarg, &g.n_head); break;
        case O_KV: bad |= parse_int(optarg, &g.n_head_kv); break;
        case O_VOCAB: bad |= parse_int(optarg, &g.n_vocab); break;
        case O_CTX: bad |= parse_int(optarg, &g.n_ctx); break;
        case O_ACT: bad |= pi_ffn_act_parse(optarg, &g.act) < 0; break;
        case O_TIED: g.tied = true; break;
        case O_DOWNT: g.down_t = true; break;
        case O_RANK: bad |= parse_int(optarg, &g.pred_rank); break;
        case O_SEED: g.seed = strtoull(optarg, NULL, 0); break;
        case O_LOC: g.locality = true; break;
        case O_SPARSITY: bad |= parse_frac(optarg, &g.sparsity); break;
        case O_SHARE: bad |= parse_frac(optarg, &g.hot_share); break;
        case O_PWRI: g.powerinfer = g.down_t = true; break;
        case O_VOCAB_FROM: g.vocab_from = optarg; break;
        case O_GATE_RANK: bad |= parse_int(optarg, &g.gate_rank); break;
        case O_PRED_EXACT: g.pred_exact = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "pi-gen-model: bad value for --%s: %s\n", opts[c - O_PRESET].name, optarg);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    if (g.vocab_from) {
        char err[256];
        if (pi_model_gen_vocab_size(g.vocab_from, &g.n_vocab, err, sizeof err) < 0) {
            fprintf(stderr, "pi-gen-model: --vocab-from %s: %s\n", g.vocab_from, err);
            return 2;
        }
    }
    if (!out_type_set) {
        bool small = g.type == PI_TYPE_Q4_0 || g.type == PI_TYPE_Q4_1 || g.type == PI_TYPE_Q5_0 ||
                     g.type == PI_TYPE_Q5_1;
        g.out_type = small ? PI_TYPE_Q8_0 : g.type; /* as llama.cpp's quantiser keeps the head */
    }
    if ((g.sparsity > 0 || g.hot_share > 0 || g.gate_rank > 0) && !g.locality) {
        fprintf(stderr, "pi-gen-model: --sparsity, --hot-share and --gate-rank need --locality\n");
        return 2;
    }
    if (g.locality && g.act != PI_FFN_ACT_DEFAULT && g.act != PI_FFN_ACT_RELU) {
        fprintf(stderr, "pi-gen-model: --locality makes ReLU models (--act relu)\n");
        return 2;
    }
    if (g.powerinfer && (g.type == PI_TYPE_BF16 || g.out_type == PI_TYPE_BF16)) {
        /* PowerInfer's ggml (d3ebd7c) has no BF16: its reader would not load the file */
        fprintf(stderr, "pi-gen-model: --powerinfer files cannot hold bf16 tensors (PowerInfer's ggml has no BF16)\n");
        return 2;
    }
    if (g.pred_exact && (g.gate_rank < 1 || g.pred_rank > 0)) {
        fprintf(stderr, "pi-gen-model: --pred-exact needs --locality --gate-rank R and no --pred-rank\n");
        return 2;
    }
    if (g.pred_exact) g.pred_rank = 2 * g.gate_rank + 1;
    if (g.gate_rank > g.n_embd) {
        fprintf(stderr, "pi-gen-model: --gate-rank %d is above n_embd (%d)\n", g.gate_rank, g.n_embd);
        return 2;
    }
    if (g.locality && (g.n_embd < 64 || g.n_embd % 32 != 0)) {
        fprintf(stderr, "pi-gen-model: --locality needs n_embd a multiple of 32 and at least 64 (--embd %d)\n", g.n_embd);
        return 2;
    }
    if (g.locality && g.n_ff > 0) { /* the rates exist (the generator logs why not) */
        float *f = malloc((size_t)g.n_ff * sizeof *f);
        int frc = f ? pi_model_gen_locality_freq(&g, 0, f) : -PI_ERR_NOMEM;
        free(f);
        if (frc < 0) return 2;
    }
    int rc = pi_model_gen_write(&g, argv[optind]);
    if (rc < 0) {
        fprintf(stderr, "pi-gen-model: writing %s failed: %s\n", argv[optind], pi_err_str(rc));
        return 1;
    }
    printf("wrote %s: %d layers, n_embd %d, n_ff %d, %d/%d heads, vocab %d, %s\n", argv[optind], g.n_layer,
           g.n_embd, g.n_ff, g.n_head, g.n_head_kv ? g.n_head_kv : g.n_head, g.n_vocab, pi_type_name(g.type));
    return 0;
}
