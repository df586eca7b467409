/*
 * coordinator/options.h - pi-coordinator's command line: named options, `--set section.key=value`,
 * `--config FILE`, the one-shot request (prompt or token ids, -n, --logits-out), interactive chat (-i,
 * --system), and what reaches the sampler beyond the config keys (--stop, --logit-bias). llama.cpp's
 * short options are taken where they mean the same (-m, -p, -f, -n, -c, -t, -s, -i).
 *
 * Every key of the configuration table (lib/conf.c) can be set on the command line, either through
 * its named option (--hot-fraction 0.5) or generically (--set gpu.hot_fraction=0.5). The command line
 * always wins over the config file whatever the order of the arguments: the file is read first, then
 * the overrides are applied in the order given.
 */
#ifndef PI_COORDINATOR_OPTIONS_H
#define PI_COORDINATOR_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "lib/conf.h"

/* What main() should do after parsing. */
enum pi_coord_mode {
    PI_COORD_EXIT_OK = 0, /* --help or --version was printed */
    PI_COORD_ONESHOT = 1, /* a prompt (text or ids) was given: generate, print, exit */
    PI_COORD_SERVER = 2,  /* no prompt: serve the control socket until stopped */
    PI_COORD_INTERACTIVE = 3, /* -i: a chat on the terminal (or a pipe) until /exit or end of input */
};

struct pi_coord_opts {
    struct pi_config cfg;      /* resolved: defaults < config file < command line */
    char *config_path;         /* --config, or NULL */
    bool model_from_cli;       /* [model] path came from the command line (for error messages) */
    int model_line;            /* line of [model] path in the config file, 0 when not from the file */
    char *prompt;              /* --prompt, --prompt-file (-f) or standard input, or NULL */
    int32_t *tokens;           /* --tokens ids (n_tokens), or NULL */
    size_t n_tokens;
    char *logits_out;          /* --logits-out FILE, or NULL */
    bool chat;                 /* --chat: the prompt is one user turn of the model's chat format */
    int n_seq;                 /* sequences the engine holds: 1 (one-shot mode, and the default) or, in
                                * server mode, [server] slots (set by pi_coord_opts_parse) */
    bool interactive;          /* -i, --interactive: chat mode (coordinator/interactive.c) */
    char *system;              /* --system: the chat's system prompt, or NULL */
    char **stop;               /* --stop strings (n_stop), in the order given */
    size_t n_stop;
    int32_t *bias_ids;         /* --logit-bias: token ids (n_bias), checked against the vocabulary at */
    float *bias;               /* the model's open; bias[i] is added to token bias_ids[i]'s logit */
    size_t n_bias;
};

/* Parse argv into o (zeroed by the caller). Prints --help/--version to out. On a usage or config
 * error prints one line to stderr (naming file, line and key for config errors) and returns a
 * negative enum pi_err; otherwise returns the mode. */
int pi_coord_opts_parse(struct pi_coord_opts *o, int argc, char **argv, FILE *out);

/* Free what pi_coord_opts_parse allocated; accepts a zeroed struct. */
void pi_coord_opts_free(struct pi_coord_opts *o);

/* Print the --help text (every option with its default, from the config table). */
void pi_coord_opts_usage(FILE *out);

/* Describe where [model] path was set, for error messages: "FILE:LINE: [model] path" or
 * "command line: --model". Writes into buf and returns it. */
const char *pi_coord_opts_model_origin(const struct pi_coord_opts *o, char *buf, size_t len);

#endif
