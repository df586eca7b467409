/*
 * coordinator/options.c - pi-coordinator's command-line parser (coordinator/options.h).
 *
 * Two passes over argv: the first only looks for --config/--help/--version (so that the file is
 * read before any override, whatever the argument order), the second applies every other option.
 * Named options are thin aliases of config keys; the help text takes each default from the config
 * table, so `--help` cannot drift from what the program really does.
 */
#include "config.h"
#include "coordinator/options.h"
#include "text/chat.h"
#include "lib/common.h"
#include "lib/input.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

/* Long options that are not config keys. */
enum {
    OPT_CONFIG = 256, OPT_SET, OPT_PROMPT, OPT_PROMPT_FILE, OPT_TOKENS, OPT_LOGITS, OPT_CHAT, OPT_HELP, OPT_VERSION,
    OPT_KEY_BASE = 512, /* OPT_KEY_BASE + i: the i-th entry of key_opts */
};

/* A named option that sets one config key. */
struct key_opt {
    const char *name;   /* long option */
    const char *dotted; /* section.key */
    const char *arg;    /* metavariable for --help */
};

static const struct key_opt key_opts[] = {
    {"model", "model.path", "PATH"},
    {"activation", "model.activation", "ACT"},
    {"ctx", "model.ctx", "N"},
    {"sidecar", "model.sidecar", "PATH"},
    {"calibration-text", "model.calibration_text", "FILE"},
    {"chat-template", "model.chat_template", "NAME"},
    {"run-dir", "run.dir", "DIR"},
    {"control", "control.endpoint", "ENDPOINT"},
    {"http", "http.listen", "HOST:PORT"},
    {"api-key-file", "http.api_key_file", "FILE"},
    {"cpu-workers", "cpu.workers", "N"},
    {"cpu-threads", "cpu.threads", "N"},
    {"gpu-backend", "gpu.backend", "B"},
    {"hot-fraction", "gpu.hot_fraction", "F"},
    {"vram-budget", "gpu.vram_budget", "BYTES"},
    {"gpu-device", "gpu.device", "N"},
    {"gpu-index", "gpu.gpu_index", "PATH"},
    {"gpu-stall-ms", "gpu.stall_ms", "MS"},
    {"n-predict", "generate.n_predict", "N"},
    {"temp", "generate.temperature", "T"},
    {"top-k", "generate.top_k", "K"},
    {"top-p", "generate.top_p", "P"},
    {"min-p", "generate.min_p", "P"},
    {"repeat-penalty", "generate.repeat_penalty", "R"},
    {"seed", "generate.seed", "S"},
    {"slots", "server.slots", "N"},
    {"log-level", "log.level", "LEVEL"},
    {"sparsity", "sparsity.mode", "MODE"},
    {"recall-every", "sparsity.recall_every", "N"},
};

/* The table entry of dotted "section.key", or NULL. */
static const struct pi_config_key_info *key_info(const char *dotted)
{
    const char *dot = strchr(dotted, '.');
    if (!dot) return NULL;
    for (size_t i = 0; i < pi_config_key_count(); i++) {
        const struct pi_config_key_info *k = pi_config_key(i);
        size_t sl = strlen(k->section);
        if (sl == (size_t)(dot - dotted) && strncmp(k->section, dotted, sl) == 0 && strcmp(k->key, dot + 1) == 0)
            return k;
    }
    return NULL;
}

void pi_coord_opts_usage(FILE *out)
{
    fputs("Usage: pi-coordinator [OPTION]...\n"
          "Run a pinfer model: one-shot when a prompt is given, otherwise as a server on the control socket.\n"
          "\n"
          "Request (one-shot mode):\n"
          "  --prompt TEXT          prompt text (BOS added as the model file says); '-' reads it from standard\n"
          "                         input; default: none (server mode)\n"
          "  -f, --prompt-file FILE the prompt is the whole of FILE ('-': standard input), unseen by ps(1)\n"
          "  --tokens ID,ID,...     the prompt as token ids instead of text; default: none\n"
          "  -n, --n-predict N      tokens to generate; 0 evaluates the prompt only; default: ",
          out);
    fprintf(out, "%s\n", key_info("generate.n_predict")->default_text);
    fputs("  --logits-out FILE      write the logits of every prompt position (little-endian float32,\n"
          "                         n_prompt x n_vocab, position-major); default: none\n"
          "  --chat                 the prompt is one user message, formatted with the chat template\n"
          "                         (--chat-template, else the file's tokenizer.chat_template); default: off\n"
          "\n"
          "Configuration (each is also a key of pinfer.conf(5); the command line wins over the file):\n"
          "  --config FILE          read the INI configuration FILE first; default: none\n"
          "  --set SECTION.KEY=VAL  set any configuration key\n",
          out);
    for (size_t i = 0; i < PI_ARRAY_LEN(key_opts); i++) {
        const struct pi_config_key_info *k = key_info(key_opts[i].dotted);
        PI_ASSERT(k != NULL);
        char lhs[64];
        if (strcmp(key_opts[i].name, "n-predict") == 0) continue; /* listed with the request */
        snprintf(lhs, sizeof lhs, "--%s %s", key_opts[i].name, key_opts[i].arg);
        const char *def = k->default_text;
        if (strcmp(key_opts[i].dotted, "run.dir") == 0) def = "$XDG_RUNTIME_DIR/pinfer, else /tmp/pinfer-$UID";
        fprintf(out, "  %-21s  %s; default: %s\n", lhs, k->help, *def ? def : "(empty)");
    }
    fputs("\n"
          "Tuning (the [tune] section of pinfer.conf(5); --set tune.KEY=VALUE; passed on to the workers):\n",
          out);
    for (size_t i = 0; i < pi_config_key_count(); i++) {
        const struct pi_config_key_info *k = pi_config_key(i);
        if (strcmp(k->section, "tune") == 0) fprintf(out, "  tune.%-16s  %s; default: %s\n", k->key, k->help, k->default_text);
    }
    fputs("\n"
          "  -h, --help             print this help and exit\n"
          "  -V, --version          print the version and exit\n"
          "\n"
          "Exit status: 0 on success, 1 on a runtime failure, 2 on a usage or configuration error.\n"
          "See pi-coordinator(1) and pinfer.conf(5).\n",
          out);
}

/* Parse "1,2,3" into a fresh array. */
static int parse_tokens(const char *s, int32_t **out, size_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *v = calloc(cap, sizeof *v);
    if (!v) return -PI_ERR_NOMEM;
    size_t k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(v);
            return -PI_ERR_INVAL;
        }
        v[k++] = (int32_t)x;
        p = *end == ',' ? end + 1 : end;
    }
    if (k == 0) { free(v); return -PI_ERR_INVAL; }
    *out = v;
    *n = k;
    return 0;
}

/* The line of the last `key =` inside [section] of an INI file, or 0 (used only to point error
 * messages about a value at the line that set it). */
static int find_key_line(const char *path, const char *section, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1024], cur[64] = "";
    int lineno = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (*p == '[') {
            char *e = strchr(p, ']');
            if (e && (size_t)(e - p - 1) < sizeof cur) { memcpy(cur, p + 1, (size_t)(e - p - 1)); cur[e - p - 1] = '\0'; }
            continue;
        }
        size_t kl = strlen(key);
        if (strcmp(cur, section) == 0 && strncmp(p, key, kl) == 0) {
            char *q = p + kl;
            while (*q == ' ' || *q == '\t') q++;
            if (*q == '=' || *q == ':') found = lineno;
        }
    }
    fclose(f);
    return found;
}

/* First pass: --config, --help, --version. Returns 0 to go on, 1 when --help/--version was printed, or
 * a negative pi_err. */
static int first_pass(struct pi_coord_opts *o, int argc, char **argv, FILE *out)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) break;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) { pi_coord_opts_usage(out); return 1; }
        if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            fprintf(out, "pi-coordinator (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
            return 1;
        }
        const char *v = NULL;
        /* --config and its abbreviations that getopt_long accepts below (--conf, --confi: "--con"
         * is ambiguous with --control), so that an abbreviated --config is not read and then
         * ignored by the second pass */
        const char *eq = strchr(a, '=');
        const size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl >= 6 && nl <= 8 && strncmp(a, "--config", nl) == 0) {
            if (eq) {
                v = eq + 1;
            } else {
                if (i + 1 >= argc) { fprintf(stderr, "pi-coordinator: --config needs a FILE\n"); return -PI_ERR_INVAL; }
                v = argv[++i];
            }
        }
        if (v) {
            free(o->config_path);
            o->config_path = strdup(v);
            if (!o->config_path) return -PI_ERR_NOMEM;
        }
    }
    return 0;
}

/* Apply one override; prints the error line. */
static int apply(struct pi_coord_opts *o, const char *dotted, const char *value, const char *what)
{
    char err[512], origin[96];
    snprintf(origin, sizeof origin, "command line (%s)", what);
    int rc = pi_config_set(&o->cfg, dotted, value, origin, err, sizeof err);
    if (rc != 0) { fprintf(stderr, "pi-coordinator: %s\n", err); return rc; }
    if (strcmp(dotted, "model.path") == 0) o->model_from_cli = true;
    return 0;
}

static int dup_arg(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    return *dst ? 0 : -PI_ERR_NOMEM;
}

/* The prompt from a file or standard input ("-"), bounded by the control protocol's message size so
 * that a prompt that runs one-shot also fits a request to the server. Prints the error line. */
static int read_prompt(struct pi_coord_opts *o, const char *path, const char *what)
{
    char err[512];
    char *text;
    int rc = pi_input_read(path, PI_INPUT_MAX_PROMPT, &text, NULL, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "pi-coordinator: %s: %s\n", what, err);
        return rc == -PI_ERR_NOMEM ? rc : -PI_ERR_INVAL;
    }
    free(o->prompt);
    o->prompt = text;
    return 0;
}

/* Second pass: everything else, through getopt_long. */
static int second_pass(struct pi_coord_opts *o, int argc, char **argv)
{
    struct option lo[PI_ARRAY_LEN(key_opts) + 12];
    size_t n = 0;
    for (size_t i = 0; i < PI_ARRAY_LEN(key_opts); i++)
        lo[n++] = (struct option){key_opts[i].name, required_argument, NULL, OPT_KEY_BASE + (int)i};
    lo[n++] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
    lo[n++] = (struct option){"set", required_argument, NULL, OPT_SET};
    lo[n++] = (struct option){"prompt", required_argument, NULL, OPT_PROMPT};
    lo[n++] = (struct option){"prompt-file", required_argument, NULL, OPT_PROMPT_FILE};
    lo[n++] = (struct option){"tokens", required_argument, NULL, OPT_TOKENS};
    lo[n++] = (struct option){"logits-out", required_argument, NULL, OPT_LOGITS};
    lo[n++] = (struct option){"chat", no_argument, NULL, OPT_CHAT};
    lo[n++] = (struct option){"help", no_argument, NULL, OPT_HELP};
    lo[n++] = (struct option){"version", no_argument, NULL, OPT_VERSION};
    lo[n++] = (struct option){NULL, 0, NULL, 0};
    PI_ASSERT(n <= PI_ARRAY_LEN(lo));

    optind = 1;
    opterr = 0;
    int c, rc = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":n:f:hV", lo, NULL)) != -1) {
        switch (c) {
        case 'n': rc = apply(o, "generate.n_predict", optarg, "-n"); break;
        case OPT_CONFIG: case OPT_HELP: case OPT_VERSION: case 'h': case 'V': break; /* first pass */
        case OPT_SET: {
            char *eq = strchr(optarg, '=');
            if (!eq) { fprintf(stderr, "pi-coordinator: --set %s: expected SECTION.KEY=VALUE\n", optarg); return -PI_ERR_INVAL; }
            char key[128];
            size_t kl = (size_t)(eq - optarg);
            if (kl >= sizeof key) { fprintf(stderr, "pi-coordinator: --set: key too long\n"); return -PI_ERR_INVAL; }
            memcpy(key, optarg, kl);
            key[kl] = '\0';
            rc = apply(o, key, eq + 1, "--set");
            break;
        }
        case OPT_PROMPT:
            rc = strcmp(optarg, "-") == 0 ? read_prompt(o, "-", "--prompt -") : dup_arg(&o->prompt, optarg);
            break;
        case 'f':
        case OPT_PROMPT_FILE: rc = read_prompt(o, optarg, "--prompt-file"); break;
        case OPT_LOGITS: rc = dup_arg(&o->logits_out, optarg); break;
        case OPT_CHAT: o->chat = true; break;
        case OPT_TOKENS:
            free(o->tokens);
            o->tokens = NULL;
            rc = parse_tokens(optarg, &o->tokens, &o->n_tokens);
            if (rc == -PI_ERR_INVAL) fprintf(stderr, "pi-coordinator: --tokens %s: expected comma-separated token ids\n", optarg);
            break;
        case ':': fprintf(stderr, "pi-coordinator: option %s needs a value (see --help)\n", argv[optind - 1]); return -PI_ERR_INVAL;
        case '?': fprintf(stderr, "pi-coordinator: unknown option %s (see --help)\n", argv[optind - 1]); return -PI_ERR_INVAL;
        default: {
            int k = c - OPT_KEY_BASE;
            PI_ASSERT(k >= 0 && (size_t)k < PI_ARRAY_LEN(key_opts));
            char what[48];
            snprintf(what, sizeof what, "--%s", key_opts[k].name);
            rc = apply(o, key_opts[k].dotted, optarg, what);
            break;
        }
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "pi-coordinator: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -PI_ERR_INVAL;
    }
    return rc;
}

int pi_coord_opts_parse(struct pi_coord_opts *o, int argc, char **argv, FILE *out)
{
    int rc = pi_config_defaults(&o->cfg);
    if (rc != 0) return rc;
    rc = first_pass(o, argc, argv, out);
    if (rc != 0) return rc > 0 ? PI_COORD_EXIT_OK : rc;
    char err[512];
    if (o->config_path) {
        rc = pi_config_load_file(&o->cfg, o->config_path, err, sizeof err);
        if (rc != 0) { fprintf(stderr, "pi-coordinator: %s\n", err); return rc; }
        o->model_line = find_key_line(o->config_path, "model", "path");
    }
    rc = second_pass(o, argc, argv);
    if (rc != 0) return rc;
    if (o->prompt && o->tokens) {
        fprintf(stderr, "pi-coordinator: give either --prompt or --tokens, not both\n");
        return -PI_ERR_INVAL;
    }
    if (o->logits_out && !o->prompt && !o->tokens) {
        fprintf(stderr, "pi-coordinator: --logits-out needs a prompt (--prompt or --tokens)\n");
        return -PI_ERR_INVAL;
    }
    if (o->chat && !o->prompt) {
        fprintf(stderr, "pi-coordinator: --chat needs --prompt (the user message)\n");
        return -PI_ERR_INVAL;
    }
    enum pi_chat_format fmt;
    if (o->cfg.chat_template && *o->cfg.chat_template && pi_chat_from_name(o->cfg.chat_template, &fmt) != 0) {
        fprintf(stderr, "pi-coordinator: [model] chat_template: '%s' is not a known chat format\n", o->cfg.chat_template);
        return -PI_ERR_INVAL;
    }
    rc = pi_config_validate(&o->cfg, err, sizeof err);
    if (rc != 0) {
        if (o->config_path) fprintf(stderr, "pi-coordinator: %s: %s\n", o->config_path, err);
        else fprintf(stderr, "pi-coordinator: %s\n", err);
        return rc;
    }
    /* the sequences the engine holds: the server's slots; a one-shot run has one */
    o->n_seq = (o->prompt || o->tokens) ? 1 : (int)o->cfg.server_slots;
    return (o->prompt || o->tokens) ? PI_COORD_ONESHOT : PI_COORD_SERVER;
}

void pi_coord_opts_free(struct pi_coord_opts *o)
{
    if (!o) return;
    pi_config_free(&o->cfg);
    free(o->config_path);
    free(o->prompt);
    free(o->tokens);
    free(o->logits_out);
    memset(o, 0, sizeof *o);
}

const char *pi_coord_opts_model_origin(const struct pi_coord_opts *o, char *buf, size_t len)
{
    if (o->model_from_cli || !o->config_path) snprintf(buf, len, "command line: --model");
    else snprintf(buf, len, "%s:%d: [model] path", o->config_path, o->model_line);
    return buf;
}
