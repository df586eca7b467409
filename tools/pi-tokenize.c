/*
 * tools/pi-tokenize.c - print the token ids (and pieces) a model's tokenizer gives a text.
 *
 *   pi-tokenize --model FILE [--pieces] [--no-bos] [--parse-special] TEXT
 *   pi-tokenize --model FILE -            (the text from standard input)
 *
 * Only the tokenizer is loaded (model/gguf.h + text/tokenizer.h): no weights are touched, so it is
 * quick on any model file. Output: the ids on one line separated by spaces, or with --pieces one
 * "id<TAB>piece" line per token, the piece as the vocabulary writes it with control bytes escaped.
 * Exit status: 0 on success, 1 when the model or its vocabulary cannot be used, 2 on usage errors.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "model/gguf.h"
#include "lib/log.h"
#include "text/tokenizer.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: pi-tokenize --model FILE [OPTION]... TEXT\n"
            "       pi-tokenize --model FILE [OPTION]... -      (read the text from standard input)\n"
            "Print the token ids the model's tokenizer gives TEXT, space-separated.\n"
            "\n"
            "  -m, --model=FILE     GGUF model (or vocabulary-only) file to take the tokenizer from\n"
            "  -p, --pieces         one line per token: id, a tab, and the token's text\n"
            "      --no-bos         do not add BOS (default: added as the file says)\n"
            "      --parse-special  recognise control tokens such as <|im_end|> written in TEXT\n"
            "                       (default: they are tokenized as plain text)\n"
            "  -h, --help           show this help and exit\n"
            "  -V, --version        show the version and exit\n"
            "\n"
            "Exit status: 0 on success, 1 if the model cannot be used, 2 on usage errors.\n");
}

/* All of standard input, up to the tokenizer's limit. */
static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            if (cap > PI_TOKENIZE_MAX_BYTES) {
                fprintf(stderr, "pi-tokenize: standard input is longer than %zu bytes\n", PI_TOKENIZE_MAX_BYTES);
                free(buf);
                return NULL;
            }
            char *p = realloc(buf, cap * 2);
            if (!p) break;
            buf = p;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) {
            if (ferror(stdin)) break;
            *len = n;
            return buf;
        }
    }
    fprintf(stderr, "pi-tokenize: cannot read standard input\n");
    free(buf);
    return NULL;
}

/* The vocabulary's text of a token, control bytes and backslashes escaped. */
static void put_piece(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
        else putchar(c);
    }
}

static int run(const char *model, const char *text, size_t len, bool bos, bool special, bool pieces)
{
    char err[512];
    pi_gguf_t *g = NULL;
    pi_tokenizer_t *t = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int status = 1;
    if (pi_gguf_open(model, &g, err, sizeof err) < 0) {
        fprintf(stderr, "pi-tokenize: %s: %s\n", model, err);
        goto out;
    }
    if (!(t = pi_tokenizer_new(g, err, sizeof err))) {
        fprintf(stderr, "pi-tokenize: %s: %s\n", model, err);
        goto out;
    }
    int rc = pi_tokenize(t, text, len, bos, special, NULL, 0, &n);
    if (rc == -PI_ERR_RANGE && n > 0 && (ids = malloc(n * sizeof(*ids))) != NULL)
        rc = pi_tokenize(t, text, len, bos, special, ids, n, &n);
    if (rc < 0) {
        fprintf(stderr, "pi-tokenize: tokenizing failed: %s\n", pi_err_str(rc));
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (pieces) {
            size_t pl;
            const char *p = pi_token_text(t, ids[i], &pl);
            printf("%d\t", ids[i]);
            put_piece(p, pl);
            putchar('\n');
        } else {
            printf(i ? " %d" : "%d", ids[i]);
        }
    }
    if (!pieces) putchar('\n');
    status = fflush(stdout) == 0 ? 0 : 1;
out:
    free(ids);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
    return status;
}

int main(int argc, char **argv)
{
    enum { OPT_NO_BOS = 256, OPT_PARSE_SPECIAL };
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'}, {"pieces", no_argument, NULL, 'p'},
        {"no-bos", no_argument, NULL, OPT_NO_BOS}, {"parse-special", no_argument, NULL, OPT_PARSE_SPECIAL},
        {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0},
    };
    const char *model = NULL;
    bool pieces = false, bos = true, special = false;
    int c;
    pi_log_set_program("pi-tokenize");
    while ((c = getopt_long(argc, argv, "m:phV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': pieces = true; break;
        case OPT_NO_BOS: bos = false; break;
        case OPT_PARSE_SPECIAL: special = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-tokenize (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model || optind != argc - 1) {
        fprintf(stderr, "pi-tokenize: %s\n", !model ? "--model FILE is required" : "exactly one TEXT (or -) is required");
        usage(stderr);
        return 2;
    }
    const char *arg = argv[optind];
    if (strcmp(arg, "-") != 0) return run(model, arg, strlen(arg), bos, special, pieces);
    size_t len = 0;
    char *text = read_stdin(&len);
    if (!text) return 1;
    int status = run(model, text, len, bos, special, pieces);
    free(text);
    return status;
}
