/*
 * coordinator/interactive.c - pi-coordinator -i: a chat on standard input and output.
 *
 * Each line read (a terminal or a pipe; a line ending in '\' goes on to the next) is one user message.
 * The whole conversation (the --system prompt, every turn) is rendered in the model's chat format
 * (text/chat.h) and tokenized again each turn, and the tokens are compared with those sequence 0 of
 * the engine holds in its cache: only the tokens from the first position that differs are evaluated
 * (the engine is truncated there; coordinator/generate.h, n_keep). Re-tokenizing is what keeps the
 * cache honest: the model's reply as the next rendering spells it need not be the ids it sampled (a
 * text has several tokenizations), and the first difference is where the cache stops being the
 * conversation. The reply is streamed as it is generated and kept in the history as text.
 *
 * A full context is said, never silently cut: a turn that does not fit starts the conversation over
 * with the system prompt and that message; a message that does not fit even so is refused.
 *
 * DESIGN (signals): SIGINT and SIGTERM only set flags (sig_atomic_t and a lock-free atomic clock), the
 * loops poll them. SIGINT during a reply stops it (the generation's stop and emit callbacks see the
 * flag; what the reply had is kept), and the flag is cleared once the reply has ended, so the next
 * SIGINT finds the prompt and quits, as does a second one within INTERRUPT_QUIT_NS of the first (a
 * long prompt evaluation that does not stop soon enough); SIGTERM quits. Standard input is polled
 * (INPUT_POLL_MS) rather than read blocking, so a signal that lands just before a read still ends the
 * wait at the prompt. The workers of a pipeline ignore SIGINT (coordinator/supervisor.c), so Ctrl-C on
 * a terminal, which signals the whole process group, reaches only this process.
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/generate.h"
#include "text/chat.h"
#include "lib/common.h"
#include "lib/input.h"
#include "lib/log.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define INTERRUPT_QUIT_NS INT64_C(1000000000) /* a second Ctrl-C within this quits */
#define MSG_MAX PI_INPUT_MAX_PROMPT           /* bytes of one user message */

static volatile sig_atomic_t interrupted; /* SIGINT since the flag was last cleared */
static volatile sig_atomic_t quit;        /* SIGTERM, or a second SIGINT in time: end the chat */
static _Atomic int_least64_t last_sigint_ns;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_signal(int sig)
{
    if (sig != SIGINT) {
        quit = 1;
        interrupted = 1;
        return;
    }
    const int64_t now = mono_ns();
    if (interrupted && now - atomic_load(&last_sigint_ns) < INTERRUPT_QUIT_NS) quit = 1;
    atomic_store(&last_sigint_ns, now);
    interrupted = 1;
}

/* The conversation: its messages (contents owned) and the ids sequence 0 of the engine holds. */
struct chat {
    const struct pi_coord_opts *o;
    const struct pi_coord_model *cm;
    pi_engine_t *e;
    struct pi_chat_msg *msgs; /* (n_msgs,): the system prompt first when given, then user/assistant turns */
    size_t n_msgs, cap_msgs;
    int32_t *cache; /* (n_cache,): the ids at positions 0.. of sequence 0 */
    size_t n_cache;
    int turn;
    char *reply; /* the reply being streamed (reply_len bytes, NUL-terminated) */
    size_t reply_len, reply_cap;
    bool tty; /* standard input is a terminal: prompts and notes for a person */
};

/* A note for the person at the terminal (stderr, so that stdout is the conversation's replies). */
__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pi-coordinator: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int push_msg(struct chat *c, const char *role, const char *text)
{
    if (c->n_msgs == c->cap_msgs) {
        size_t cap = c->cap_msgs ? 2 * c->cap_msgs : 8;
        struct pi_chat_msg *m = realloc(c->msgs, cap * sizeof *m);
        if (!m) return -PI_ERR_NOMEM;
        c->msgs = m;
        c->cap_msgs = cap;
    }
    char *dup = strdup(text);
    if (!dup) return -PI_ERR_NOMEM;
    c->msgs[c->n_msgs++] = (struct pi_chat_msg){role, dup};
    return 0;
}

/* Drop the messages from index keep on. */
static void drop_msgs(struct chat *c, size_t keep)
{
    while (c->n_msgs > keep) free((char *)c->msgs[--c->n_msgs].content);
}

/* The first message that is not the system prompt. */
static size_t first_turn(const struct chat *c) { return c->o->system ? 1 : 0; }

/* The conversation rendered and tokenized (BOS as the model says, the format's markers parsed) into
 * *ids (malloc'd, *n). 0, or a negative pi_err after one line on stderr. */
static int conversation_ids(struct chat *c, int32_t **ids, size_t *n)
{
    char *text = pi_coord_chat_render(c->o, c->cm->tok, c->msgs, c->n_msgs, "-i");
    if (!text) return -PI_ERR_INVAL;
    int rc = pi_tokenize_alloc(c->cm->tok, text, strlen(text), true, true, ids, n);
    free(text);
    if (rc != 0) note("tokenizing the conversation failed: %s", pi_err_str(rc));
    return rc;
}

/* Stream a piece of the reply to stdout and keep it for the history. */
static int emit_reply(void *ctx, const char *text, size_t len)
{
    struct chat *c = ctx;
    if (interrupted) return -1;
    if (c->reply_len + len + 1 > c->reply_cap) {
        size_t cap = PI_MAX(2 * c->reply_cap, c->reply_len + len + 1);
        char *r = realloc(c->reply, cap);
        if (!r) return -1;
        c->reply = r;
        c->reply_cap = cap;
    }
    memcpy(c->reply + c->reply_len, text, len);
    c->reply_len += len;
    c->reply[c->reply_len] = '\0';
    if (fwrite(text, 1, len, stdout) != len) return -1;
    return fflush(stdout) == 0 ? 0 : -1;
}

static int stop_requested(void *ctx)
{
    (void)ctx;
    return interrupted != 0;
}

/* The one place this mode runs the engine: a generation of r (coordinator/generate.h). */
static int run_generation(struct chat *c, const struct pi_gen_request *r, struct pi_gen_result *res)
{
    return pi_generate(c->e, c->cm->tok, r, emit_reply, c, res);
}

/* Tokens of the conversation that fit with room for a reply; when they do not, start over with the
 * system prompt and the last message, and when that does not fit either, refuse the message. Returns
 * 0 with *ids, 1 when the message was refused (and dropped), or a negative pi_err. */
static int fitting_ids(struct chat *c, int32_t **ids, size_t *n)
{
    const int n_ctx = c->e->n_ctx;
    for (int attempt = 0;; attempt++) {
        int rc = conversation_ids(c, ids, n);
        if (rc != 0) return rc;
        if (*n < (size_t)n_ctx) return 0; /* at least one position left for the reply */
        free(*ids);
        *ids = NULL;
        const size_t first = first_turn(c);
        if (attempt == 0 && c->n_msgs > first + 1) {
            note("the context of %d positions is full: the conversation starts over, keeping the system prompt", n_ctx);
            struct pi_chat_msg last = c->msgs[c->n_msgs - 1];
            c->n_msgs--; /* the user's message moves to the front */
            drop_msgs(c, first);
            c->msgs[c->n_msgs++] = last;
            continue;
        }
        note("the message (%zu tokens with the system prompt) does not fit the context of %d positions: not sent", *n,
             n_ctx);
        drop_msgs(c, c->n_msgs - 1);
        return 1;
    }
}

/* Keep the cache's record in step with what the engine holds after a generation over ids (n). */
static void update_cache(struct chat *c, const int32_t *ids, const int32_t *gen, const struct pi_gen_result *res)
{
    if (res->n_prompt == 0) { /* the engine took nothing; its cache is not known any more: reset next time */
        c->n_cache = 0;
        return;
    }
    const size_t n_gen = (size_t)(res->n_cached - res->n_prompt_done);
    memcpy(c->cache, ids, (size_t)res->n_prompt_done * sizeof *ids);
    memcpy(c->cache + res->n_prompt_done, gen, n_gen * sizeof *gen);
    c->n_cache = (size_t)res->n_cached;
}

/* One reply to the last (user) message. 0, or a negative pi_err when the chat cannot go on. */
static int reply(struct chat *c)
{
    int32_t *ids = NULL, *gen = NULL;
    size_t n = 0;
    int rc = fitting_ids(c, &ids, &n);
    if (rc != 0) return rc > 0 ? 0 : rc;
    const int n_ctx = c->e->n_ctx;
    /* the last generated token is not evaluated: n + n_predict may reach n_ctx + 1 */
    int64_t room = (int64_t)n_ctx + 1 - (int64_t)n;
    int64_t n_predict = c->o->cfg.n_predict > 0 ? PI_MIN(c->o->cfg.n_predict, room) : room;
    size_t keep = 0;
    while (keep < c->n_cache && keep < n && c->cache[keep] == ids[keep]) keep++;
    if (keep == n) keep--; /* the last token is evaluated again: its logits start the reply */
    c->turn++;
    pi_debug("chat turn %d: %zu tokens, %zu of them in the cache, evaluating %zu from position %zu", c->turn, n, keep,
             n - keep, keep);
    int32_t *cache = realloc(c->cache, (size_t)n_ctx * sizeof *cache);
    gen = malloc((size_t)PI_MAX(n_predict, 1) * sizeof *gen);
    if (!cache || !gen) {
        if (cache) c->cache = cache;
        free(ids);
        free(gen);
        return -PI_ERR_NOMEM;
    }
    c->cache = cache;
    struct pi_gen_request r = {0};
    r.tokens = ids;
    r.n_tokens = n;
    r.n_keep = (int)keep;
    r.n_predict = n_predict;
    r.stop = stop_requested;
    r.gen_ids = gen;
    r.gen_cap = (size_t)n_predict;
    pi_coord_request_extras(c->o, &r);
    pi_gen_params_from_config(&c->o->cfg, &r.sample);
    r.sample.seed += (uint64_t)c->turn; /* the same seed gives the same chat, not the same draws each turn */
    c->reply_len = 0;
    if (c->reply) c->reply[0] = '\0';
    struct pi_gen_result res;
    rc = run_generation(c, &r, &res);
    if (rc == -PI_ERR_PEER && res.n_prompt == 0 && r.n_keep > 0) {
        /* a worker died between turns: the truncation found the pipeline gone and nothing ran; a
         * fresh one (the reset restarts it) evaluates the whole conversation */
        note("a worker of the pipeline died since the last reply: restarting it");
        r.n_keep = 0;
        rc = run_generation(c, &r, &res);
    }
    /* the SIGINT that stopped this reply is spent; one from now on lands at the prompt and quits */
    const bool stopped = interrupted != 0;
    interrupted = 0;
    update_cache(c, ids, gen, &res);
    fputc('\n', stdout);
    fflush(stdout);
    free(ids);
    free(gen);
    if (rc == -PI_ERR_PEER || (rc != 0 && !stopped && rc != -PI_ERR_IO)) {
        note("the reply failed (%s)%s", rc == -PI_ERR_PEER ? "a worker of the pipeline died" : pi_err_str(rc),
             rc == -PI_ERR_PEER ? "; the next message restarts the pipeline" : "");
        drop_msgs(c, c->n_msgs - 1); /* the turns stay user, assistant, user, ... */
        c->n_cache = 0;
        return rc == -PI_ERR_PEER ? 0 : rc;
    }
    if (stopped && !quit) note("stopped");
    int prc = push_msg(c, "assistant", c->reply ? c->reply : "");
    if (prc != 0) return prc;
    pi_info("chat turn %d: %d prompt tokens (%d evaluated in %.3f s), %d generated in %.3f s (%.1f tok/s)%s", c->turn,
            res.n_prompt, res.n_prompt_done - r.n_keep, res.prompt_s, res.n_generated, res.gen_s,
            res.gen_s > 0 ? res.n_generated / res.gen_s : 0.0,
            res.stop_eog           ? ", end of text"
            : res.stop_string >= 0 ? ", stop string"
                                   : "");
    if (rc == 0 && !res.stop_eog && res.stop_string < 0 && res.n_generated == n_predict && n_predict == room)
        note("the context of %d positions is full: the next message starts the conversation over, keeping the system "
             "prompt",
             n_ctx);
    return 0;
}

enum { READ_OK = 0, READ_EOF = 1, READ_INTERRUPTED = 2, READ_BAD = 3 };
enum { IN_EOF = -1, IN_INTR = -2 };

/* Standard input read through its descriptor, not stdio: poll with a short timeout lets a SIGINT
 * that lands just before the read (a race no blocking read can close) still end the wait. */
struct input {
    int fd;
    char buf[4096];
    size_t pos, len;
    bool eof;
};

#define INPUT_POLL_MS 100

/* The next byte of in (0..255), IN_EOF at the end of input (or a read error), IN_INTR when a SIGINT
 * or SIGTERM came while there was nothing buffered. */
static int next_byte(struct input *in)
{
    while (in->pos == in->len) {
        if (in->eof) return IN_EOF;
        if (interrupted) return IN_INTR;
        struct pollfd p = {.fd = in->fd, .events = POLLIN};
        int r = poll(&p, 1, INPUT_POLL_MS);
        if (r < 0 && errno != EINTR) return IN_EOF;
        if (r <= 0) continue;
        ssize_t k = read(in->fd, in->buf, sizeof in->buf);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) {
            in->eof = true; /* end of input, or an error reading it: the chat ends either way */
            continue;
        }
        in->pos = 0;
        in->len = (size_t)k;
    }
    return (unsigned char)in->buf[in->pos++];
}

/* One user message from in: a line without its newline (and '\r'), joined with the next while it ends
 * in '\'. READ_BAD: a NUL byte or more than MSG_MAX bytes (the line was read to its end and dropped). */
static int read_message(struct input *in, char **out)
{
    size_t cap = 256, n = 0;
    char *b = malloc(cap);
    bool bad = false;
    if (!b) return READ_BAD;
    for (;;) {
        int ch = next_byte(in);
        if (ch == IN_INTR) {
            free(b);
            return READ_INTERRUPTED;
        }
        if (ch == IN_EOF) {
            if (n == 0 && !bad) {
                free(b);
                return READ_EOF;
            }
            break; /* the last line, without its newline */
        }
        if (ch == '\n') {
            if (n > 0 && b[n - 1] == '\\') {
                b[n - 1] = '\n';
                continue;
            }
            break;
        }
        if (ch == '\0' || n + 1 >= MSG_MAX) {
            bad = true;
            continue;
        }
        if (n + 2 > cap) {
            char *nb = realloc(b, 2 * cap);
            if (!nb) {
                bad = true;
                continue;
            }
            b = nb;
            cap *= 2;
        }
        b[n++] = (char)ch;
    }
    if (bad) {
        free(b);
        return READ_BAD;
    }
    if (n > 0 && b[n - 1] == '\r') n--;
    b[n] = '\0';
    *out = b;
    return READ_OK;
}

/* Leading and trailing blanks off, for the commands. */
static bool is_command(const char *line, const char *cmd)
{
    while (*line == ' ' || *line == '\t') line++;
    size_t l = strlen(cmd);
    if (strncmp(line, cmd, l) != 0) return false;
    for (line += l; *line; line++)
        if (*line != ' ' && *line != '\t') return false;
    return true;
}

/* The read-reply loop. 0 at /exit or end of input (or a quitting Ctrl-C), else a negative pi_err. */
static int chat_loop(struct chat *c)
{
    bool first = c->o->prompt != NULL; /* -p: the first message */
    struct input in = {.fd = 0};
    while (!quit) {
        char *line = NULL;
        int rd;
        if (first) {
            first = false;
            line = strdup(c->o->prompt);
            rd = line ? READ_OK : READ_BAD;
        } else {
            if (c->tty) {
                fputs("> ", stdout);
                fflush(stdout);
            }
            rd = read_message(&in, &line);
        }
        if (rd == READ_EOF) break;
        if (rd == READ_INTERRUPTED) {
            if (c->tty) fputc('\n', stdout);
            break;
        }
        if (rd == READ_BAD) {
            note("a message with a NUL byte or longer than %u bytes: ignored", (unsigned)MSG_MAX);
            continue;
        }
        if (is_command(line, "/exit") || is_command(line, "/quit")) {
            free(line);
            break;
        }
        if (is_command(line, "/reset")) {
            drop_msgs(c, first_turn(c));
            note("the conversation starts over");
        } else if (line[strspn(line, " \t")] != '\0') {
            int rc = push_msg(c, "user", line);
            if (rc == 0) rc = reply(c);
            if (rc != 0) {
                free(line);
                return rc;
            }
        }
        free(line);
    }
    return 0;
}

int pi_coord_run_interactive(const struct pi_coord_opts *o, const char *argv0)
{
    struct pi_coord_model cm;
    if (pi_coord_model_open(o, o->cfg.gpu_backend == PI_GPU_NONE, &cm) != 0) return PI_EXIT_USAGE;
    int status = PI_EXIT_USAGE;
    struct chat c = {.o = o, .cm = &cm, .tty = isatty(0) == 1};
    if (!cm.tok) {
        fprintf(stderr, "pi-coordinator: -i: the model has no tokenizer\n");
        goto out;
    }
    if (pi_coord_check_bias(o, cm.model->hp.n_vocab) != 0) goto out;
    /* the format is checked before the engine starts: a model without a known template fails at once */
    if (o->system && push_msg(&c, "system", o->system) != 0) goto out;
    char *probe = pi_coord_chat_render(o, cm.tok, c.msgs, c.n_msgs, "-i");
    if (!probe) goto out;
    free(probe);
    status = PI_EXIT_FAILURE;
    c.e = pi_coord_engine_new(o, &cm, argv0);
    if (!c.e) {
        fprintf(stderr, "pi-coordinator: the %s could not be started (see the errors above)\n",
                o->cfg.gpu_backend == PI_GPU_NONE ? "forward pass" : "pipeline");
        goto out;
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: a blocked read returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (c.tty)
        note("chat with %s (context %d); a message per line, '\\' at the end goes on; /exit or Ctrl-D quits, /reset "
             "starts over, Ctrl-C stops a reply",
             o->cfg.model_path, c.e->n_ctx);
    int rc = chat_loop(&c);
    if (rc != 0) note("the chat ended: %s", pi_err_str(rc));
    status = rc == 0 ? PI_EXIT_OK : PI_EXIT_FAILURE;
out:
    drop_msgs(&c, 0);
    free(c.msgs);
    free(c.cache);
    free(c.reply);
    pi_engine_destroy(&c.e);
    pi_coord_model_close(&cm);
    return status;
}
