/*
 * coordinator/options.c - pi-coordinator's command-line parser (coordinator/options.h).
 *
 * Two passes over argv with the same getopt_long table: the first only looks for --config/--help/
 * --version (so that the file is read before any override, whatever the argument order), the second
 * applies every other option. The first pass parses as the second does, so an option's value is never
 * taken for an option (`--prompt --help` is a prompt).
 * Named options are thin aliases of config keys; the help text takes each default from the config
 * table, so `--help` cannot drift from what the program really does.
 */
#include "config.h"
#include "coordinator/options.h"
#include "text/chat.h"
#include "text/stop.h"
#include "text/unicode.h"
#include "lib/common.h"
#include "lib/input.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Long options that are not config keys. */
enum {
    OPT_CONFIG = 256, OPT_SET, OPT_PROMPT, OPT_PROMPT_FILE, OPT_TOKENS, OPT_LOGITS, OPT_CHAT, OPT_HELP, OPT_VERSION,
    OPT_INTERACTIVE, OPT_SYSTEM, OPT_STOP, OPT_LOGIT_BIAS,
    OPT_KEY_BASE = 512, /* OPT_KEY_BASE + i: the i-th entry of key_opts */
};

/* A named option that sets one config key. */
struct key_opt {
    const char *name;   /* long option */
    const char *dotted; /* section.key */
    const char *arg;    /* metavariable for --help */
    char short_opt;     /* llama.cpp's short option of the same meaning, or 0 */
};

static const struct key_opt key_opts[] = {
    {"model", "model.path", "PATH", 'm'},
    {"activation", "model.activation", "ACT", 0},
    {"ctx", "model.ctx", "N", 'c'},
    {"sidecar", "model.sidecar", "PATH", 0},
    {"calibration-text", "model.calibration_text", "FILE", 0},
    {"chat-template", "model.chat_template", "NAME", 0},
    {"check-tensors", "model.check_tensors", "MODE", 0},
    {"run-dir", "run.dir", "DIR", 0},
    {"control", "control.endpoint", "ENDPOINT", 0},
    {"http", "http.listen", "HOST:PORT", 0},
    {"api-key-file", "http.api_key_file", "FILE", 0},
    {"cpu-workers", "cpu.workers", "N", 0},
    {"cpu-threads", "cpu.threads", "N", 't'},
    {"gpu-backend", "gpu.backend", "B", 0},
    {"hot-fraction", "gpu.hot_fraction", "F", 0},
    {"vram-budget", "gpu.vram_budget", "BYTES", 0},
    {"gpu-device", "gpu.device", "N", 0},
    {"gpu-index", "gpu.gpu_index", "PATH", 0},
    {"gpu-stall-ms", "gpu.stall_ms", "MS", 0},
    {"n-predict", "generate.n_predict", "N", 'n'},
    {"temp", "generate.temperature", "T", 0},
    {"top-k", "generate.top_k", "K", 0},
    {"top-p", "generate.top_p", "P", 0},
    {"min-p", "generate.min_p", "P", 0},
    {"repeat-penalty", "generate.repeat_penalty", "R", 0},
    {"presence-penalty", "generate.presence_penalty", "P", 0},
    {"frequency-penalty", "generate.frequency_penalty", "F", 0},
    {"seed", "generate.seed", "S", 's'},
    {"slots", "server.slots", "N", 0},
    {"log-level", "log.level", "LEVEL", 0},
    {"sparsity", "sparsity.mode", "MODE", 0},
    {"recall-every", "sparsity.recall_every", "N", 0},
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
          "Run a pinfer model: one-shot when a prompt is given, a chat with -i, otherwise as a server on the\n"
          "control socket.\n"
          "\n"
          "Request (one-shot mode):\n"
          "  -p, --prompt TEXT      prompt text (BOS added as the model file says); '-' reads it from standard\n"
          "                         input; default: none (server mode)\n"
          "  -f, --prompt-file FILE the prompt is the whole of FILE ('-': standard input), unseen by ps(1)\n"
          "  --tokens ID,ID,...     the prompt as token ids instead of text; default: none\n"
          "  -n, --n-predict N      tokens to generate (in a chat: per reply); 0 evaluates the prompt only;\n"
          "                         default: ",
          out);
    fprintf(out, "%s\n", key_info("generate.n_predict")->default_text);
    fputs("  --logits-out FILE      write the logits of every prompt position (little-endian float32,\n"
          "                         n_prompt x n_vocab, position-major); default: none\n"
          "  --chat                 the prompt is one user message, formatted with the chat template\n"
          "                         (--chat-template, else the file's tokenizer.chat_template); default: off\n"
          "\n"
          "Chat (interactive mode):\n"
          "  -i, --interactive      read user messages from standard input (a terminal or a pipe), one per line\n"
          "                         (a line ending in '\\' goes on), and stream the replies; /exit or end of input\n"
          "                         quits, /reset forgets the conversation, Ctrl-C stops a reply (at the\n"
          "                         prompt, or twice within a second, it quits); a --prompt is the first\n"
          "                         message; default: off\n"
          "  --system TEXT          the chat's system prompt (with -i or --chat); default: none\n"
          "\n"
          "Sampling beyond the [generate] keys (one-shot and chat):\n"
          "  --stop STR             end the output where STR appears (not printed); repeatable, at most 64,\n"
          "                         each 1 to 1024 bytes of UTF-8; default: none\n"
          "  --logit-bias ID(+|-)B  add B to the logit of token ID (15043+1, 15043-0.5; 15043-inf bans it);\n"
          "                         repeatable; default: none\n"
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
        if (key_opts[i].short_opt)
            snprintf(lhs, sizeof lhs, "-%c, --%s %s", key_opts[i].short_opt, key_opts[i].name, key_opts[i].arg);
        else snprintf(lhs, sizeof lhs, "--%s %s", key_opts[i].name, key_opts[i].arg);
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

/* The getopt_long table of both passes: lo (LONGOPTS_MAX entries, NULL-terminated) and the short
 * options (a leading ':' so that a missing value is told from an unknown option). */
#define LONGOPTS_MAX (PI_ARRAY_LEN(key_opts) + 16)
static void option_table(struct option *lo, char *shorts, size_t slen)
{
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
    lo[n++] = (struct option){"interactive", no_argument, NULL, OPT_INTERACTIVE};
    lo[n++] = (struct option){"system", required_argument, NULL, OPT_SYSTEM};
    lo[n++] = (struct option){"stop", required_argument, NULL, OPT_STOP};
    lo[n++] = (struct option){"logit-bias", required_argument, NULL, OPT_LOGIT_BIAS};
    lo[n++] = (struct option){"help", no_argument, NULL, OPT_HELP};
    lo[n++] = (struct option){"version", no_argument, NULL, OPT_VERSION};
    lo[n++] = (struct option){NULL, 0, NULL, 0};
    PI_ASSERT(n <= LONGOPTS_MAX);
    size_t k = (size_t)snprintf(shorts, slen, ":hVip:f:");
    for (size_t i = 0; i < PI_ARRAY_LEN(key_opts); i++) {
        if (!key_opts[i].short_opt) continue;
        PI_ASSERT(k + 3 <= slen);
        shorts[k++] = key_opts[i].short_opt;
        shorts[k++] = ':';
        shorts[k] = '\0';
    }
}

/* First pass: --config, --help, --version, parsed as the second pass parses (an option's value is
 * never an option; errors are left to the second pass). Returns 0 to go on, 1 when --help/--version
 * was printed (the first of them given), or a negative pi_err. */
static int first_pass(struct pi_coord_opts *o, int argc, char **argv, FILE *out)
{
    struct option lo[LONGOPTS_MAX];
    char shorts[64];
    option_table(lo, shorts, sizeof shorts);
    optind = 0; /* a full reset of glibc's getopt */
    opterr = 0;
    int c, first = 0;
    while ((c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        if (!first && (c == 'h' || c == OPT_HELP)) first = 'h';
        if (!first && (c == 'V' || c == OPT_VERSION)) first = 'V';
        if (c == OPT_CONFIG) {
            free(o->config_path);
            o->config_path = strdup(optarg);
            if (!o->config_path) return -PI_ERR_NOMEM;
        }
    }
    if (first == 'h') pi_coord_opts_usage(out);
    if (first == 'V') fprintf(out, "pi-coordinator (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
    return first ? 1 : 0;
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

/* Why stop string t cannot be one (NULL when it can): empty, too long or not UTF-8 (text/stop.h). */
static const char *stop_defect(const char *t)
{
    size_t n = strlen(t);
    if (n == 0) return "empty";
    if (n > PI_STOP_MAX_LEN) return "longer than 1024 bytes";
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = pi_utf8_decode((const unsigned char *)t + i, n - i, &cp);
        /* U+FFFD from a byte that is not its own encoding (EF BF BD): invalid UTF-8 */
        if (cp == 0xFFFD && !(k == 3 && memcmp(t + i, "\xEF\xBF\xBD", 3) == 0)) return "not valid UTF-8";
        i += k;
    }
    return NULL;
}

/* --stop STR: appended to o->stop. Prints the error line. */
static int add_stop(struct pi_coord_opts *o, const char *t)
{
    const char *why = stop_defect(t);
    if (why) { fprintf(stderr, "pi-coordinator: --stop '%s': %s\n", t, why); return -PI_ERR_INVAL; }
    if (o->n_stop >= PI_STOP_MAX_STRINGS) {
        fprintf(stderr, "pi-coordinator: --stop: more than %d stop strings\n", PI_STOP_MAX_STRINGS);
        return -PI_ERR_INVAL;
    }
    char **v = realloc(o->stop, (o->n_stop + 1) * sizeof *v);
    if (!v) return -PI_ERR_NOMEM;
    o->stop = v;
    if (!(v[o->n_stop] = strdup(t))) return -PI_ERR_NOMEM;
    o->n_stop++;
    return 0;
}

#define BIAS_MAX_FINITE 100.0 /* OpenAI's logit_bias range; +-inf force or ban a token */
#define BIAS_MAX_ENTRIES 4096

/* --logit-bias ID(+|-)BIAS (llama.cpp's form: "15043+1", "15043-inf"): appended to o->bias. Prints the
 * error line. The id is checked against the model's vocabulary once it is open. */
static int add_bias(struct pi_coord_opts *o, const char *t)
{
    char *end = NULL, *vend = NULL;
    long id = -1;
    double v = NAN;
    if (isdigit((unsigned char)t[0])) {
        errno = 0;
        id = strtol(t, &end, 10);
        if (errno || id > INT32_MAX || (*end != '+' && *end != '-')) id = -1;
        else v = strtod(end, &vend);
    }
    if (id < 0 || vend == end + 1 || *vend != '\0' || isnan(v) || (isfinite(v) && fabs(v) > BIAS_MAX_FINITE)) {
        fprintf(stderr, "pi-coordinator: --logit-bias '%s': expected ID+BIAS or ID-BIAS (a token id, then a bias in "
                "[-100, 100] or inf), e.g. 15043+1 or 15043-inf\n", t);
        return -PI_ERR_INVAL;
    }
    if (o->n_bias >= BIAS_MAX_ENTRIES) {
        fprintf(stderr, "pi-coordinator: --logit-bias: more than %d entries\n", BIAS_MAX_ENTRIES);
        return -PI_ERR_INVAL;
    }
    int32_t *ids = realloc(o->bias_ids, (o->n_bias + 1) * sizeof *ids);
    if (!ids) return -PI_ERR_NOMEM;
    o->bias_ids = ids;
    float *b = realloc(o->bias, (o->n_bias + 1) * sizeof *b);
    if (!b) return -PI_ERR_NOMEM;
    o->bias = b;
    ids[o->n_bias] = (int32_t)id;
    b[o->n_bias++] = (float)v;
    return 0;
}

/* A config key's option: the index of its long option (k >= 0) or its short letter (k = -letter). */
static int key_option(struct pi_coord_opts *o, int k, const char *value)
{
    char what[48];
    const int letter = k < 0 ? -k : 0;
    if (letter) {
        for (size_t i = 0; i < PI_ARRAY_LEN(key_opts); i++)
            if (key_opts[i].short_opt == letter) k = (int)i;
        PI_ASSERT(k >= 0);
        snprintf(what, sizeof what, "-%c", letter);
    } else {
        PI_ASSERT((size_t)k < PI_ARRAY_LEN(key_opts));
        snprintf(what, sizeof what, "--%s", key_opts[k].name);
    }
    /* llama.cpp's -cnv would read as a context of "nv": say what the user meant */
    if (letter == 'c' && strcmp(value, "nv") == 0) {
        fprintf(stderr, "pi-coordinator: -cnv is llama.cpp's conversation mode: pinfer's chat is -i (--interactive)\n");
        return -PI_ERR_INVAL;
    }
    return apply(o, key_opts[k].dotted, value, what);
}

/* The error line of a long option getopt_long refused: a value given to an option that takes none, an
 * abbreviation of several options (named with them: "--con": --config, --control), or unknown. */
static void unknown_long(const struct option *lo, const char *arg)
{
    const char *name = strncmp(arg, "--", 2) == 0 ? arg + 2 : arg;
    const size_t len = strcspn(name, "=");
    char list[256] = "";
    int n = 0;
    for (; len > 0 && lo->name; lo++) {
        if (strncmp(lo->name, name, len) != 0) continue;
        if (lo->name[len] == '\0' && name[len] == '=') { /* exact: an option without a value given one */
            fprintf(stderr, "pi-coordinator: option --%s takes no value (see --help)\n", lo->name);
            return;
        }
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s--%s", n++ ? ", " : "", lo->name);
    }
    if (n > 1) fprintf(stderr, "pi-coordinator: option %.*s is ambiguous: %s (see --help)\n", (int)(len + 2), arg, list);
    else fprintf(stderr, "pi-coordinator: unknown option %s (see --help)\n", arg);
}

/* Second pass: everything else, through getopt_long. */
static int second_pass(struct pi_coord_opts *o, int argc, char **argv)
{
    struct option lo[LONGOPTS_MAX];
    char shorts[64];
    option_table(lo, shorts, sizeof shorts);
    optind = 0;
    opterr = 0;
    int c, rc = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        switch (c) {
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
        case 'p':
        case OPT_PROMPT:
            rc = strcmp(optarg, "-") == 0 ? read_prompt(o, "-", "--prompt -") : dup_arg(&o->prompt, optarg);
            break;
        case 'f':
        case OPT_PROMPT_FILE: rc = read_prompt(o, optarg, "--prompt-file"); break;
        case OPT_LOGITS: rc = dup_arg(&o->logits_out, optarg); break;
        case OPT_CHAT: o->chat = true; break;
        case 'i':
        case OPT_INTERACTIVE: o->interactive = true; break;
        case OPT_SYSTEM: rc = dup_arg(&o->system, optarg); break;
        case OPT_STOP: rc = add_stop(o, optarg); break;
        case OPT_LOGIT_BIAS: rc = add_bias(o, optarg); break;
        case OPT_TOKENS:
            free(o->tokens);
            o->tokens = NULL;
            rc = parse_tokens(optarg, &o->tokens, &o->n_tokens);
            if (rc == -PI_ERR_INVAL) fprintf(stderr, "pi-coordinator: --tokens %s: expected comma-separated token ids\n", optarg);
            break;
        /* A short option is named by optopt: inside a cluster (-iz) argv[optind - 1] is another argument.
         * A long one (optopt 0 when unknown, its value when it takes none but got one) by its argument. */
        case ':':
            if (optopt > 0 && optopt < 128) fprintf(stderr, "pi-coordinator: option -%c needs a value (see --help)\n", optopt);
            else fprintf(stderr, "pi-coordinator: option %s needs a value (see --help)\n", argv[optind - 1]);
            return -PI_ERR_INVAL;
        case '?':
            if (optopt > 0 && optopt < 128) fprintf(stderr, "pi-coordinator: unknown option -%c (see --help)\n", optopt);
            else unknown_long(lo, argv[optind - 1]);
            return -PI_ERR_INVAL;
        default: rc = key_option(o, c < 128 ? -c : c - OPT_KEY_BASE, optarg); break;
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
    if (o->interactive && (o->tokens || o->logits_out)) {
        fprintf(stderr, "pi-coordinator: -i (--interactive) takes text: not with %s\n", o->tokens ? "--tokens" : "--logits-out");
        return -PI_ERR_INVAL;
    }
    if (o->chat && !o->prompt && !o->interactive) {
        fprintf(stderr, "pi-coordinator: --chat needs --prompt (the user message)\n");
        return -PI_ERR_INVAL;
    }
    if (o->system && !o->chat && !o->interactive) {
        fprintf(stderr, "pi-coordinator: --system needs -i (--interactive) or --chat: it is a chat's system prompt\n");
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
    if (o->interactive) return PI_COORD_INTERACTIVE;
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
    free(o->system);
    for (size_t i = 0; i < o->n_stop; i++) free(o->stop[i]);
    free(o->stop);
    free(o->bias_ids);
    free(o->bias);
    memset(o, 0, sizeof *o);
}

const char *pi_coord_opts_model_origin(const struct pi_coord_opts *o, char *buf, size_t len)
{
    if (o->model_from_cli || !o->config_path) snprintf(buf, len, "command line: --model");
    else snprintf(buf, len, "%s:%d: [model] path", o->config_path, o->model_line);
    return buf;
}
