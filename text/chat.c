/*
 * text/chat.c - the built-in chat formats and the recognition of Jinja templates (see text/chat.h).
 *
 * Each renderer below restates what one family's official template renders; the template it
 * follows is named above it (the strings themselves are in tests/unit/test-chat.c with their sources).
 * Templates that accept only one leading system message (llama2, mistral, gemma) return
 * -PI_ERR_INVAL for a system message elsewhere, where their Jinja would raise or drop it.
 */
#include "config.h"

#include "text/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/common.h"
#include "lib/log.h"

static const char *const names[PI_CHAT_FORMAT_COUNT] = {
    "llama2", "llama3", "chatml", "mistral-v1", "mistral-v3", "phi3", "gemma", "zephyr", "mistral-v0",
};

const char *pi_chat_name(enum pi_chat_format f)
{
    return (unsigned)f < PI_CHAT_FORMAT_COUNT ? names[f] : "unknown";
}

int pi_chat_from_name(const char *name, enum pi_chat_format *out)
{
    for (int i = 0; i < PI_CHAT_FORMAT_COUNT; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum pi_chat_format)i;
            return 0;
        }
    }
    return -PI_ERR_NOTFOUND;
}

/* ---- recognition ---- */

static bool has(const char *t, const char *s) { return strstr(t, s) != NULL; }

static int unsupported(const char *what, char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "chat template: %s is not built in (known: llama2 llama3 chatml mistral-v0 mistral-v1 "
                 "mistral-v3 phi3 gemma zephyr; name one to override)", what);
    return -PI_ERR_UNSUPPORTED;
}

/* Marker substrings in the order llama.cpp tests them (src/llama-chat.cpp), restricted to the
 * formats built in here. */
int pi_chat_detect(const char *t, enum pi_chat_format *out, char *err, size_t errlen)
{
    if (pi_chat_from_name(t, out) == 0) return 0;
    if (has(t, "<|im_start|>")) {
        if (has(t, "<|im_sep|>")) return unsupported("phi-4 (<|im_sep|>)", err, errlen);
        *out = PI_CHAT_CHATML;
    } else if (strncmp(t, "mistral", 7) == 0 || has(t, "[INST]")) {
        if (has(t, "[SYSTEM_PROMPT]")) return unsupported("mistral v7 ([SYSTEM_PROMPT])", err, errlen);
        if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
            if (has(t, " [INST]")) *out = PI_CHAT_MISTRAL_V1;
            else if (has(t, "\"[INST]\"")) return unsupported("mistral v3-tekken", err, errlen);
            else *out = PI_CHAT_MISTRAL_V3;
        } else if (has(t, "<<SYS>>")) {
            *out = PI_CHAT_LLAMA2;
        } else {
            *out = PI_CHAT_MISTRAL_V0; /* [INST] without a system prompt: the original mistral templates */
        }
    } else if (has(t, "<|assistant|>") && has(t, "<|end|>")) {
        *out = PI_CHAT_PHI3;
    } else if (has(t, "<|user|>") && (has(t, "<|endoftext|>") || (has(t, "<|assistant|>") && has(t, "eos_token")))) {
        *out = PI_CHAT_ZEPHYR;
    } else if (has(t, "<start_of_turn>")) {
        *out = PI_CHAT_GEMMA;
    } else if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) {
        *out = PI_CHAT_LLAMA3;
    } else {
        return unsupported("this template", err, errlen);
    }
    return 0;
}

int pi_chat_resolve(const char *name, const char *tmpl, enum pi_chat_format *out, char *err, size_t errlen)
{
    int rc;
    if (err && errlen) err[0] = 0;
    if (name && *name) {
        if (pi_chat_from_name(name, out) == 0) return 0;
        if (err && errlen)
            snprintf(err, errlen, "unknown chat format \"%s\" (known: llama2 llama3 chatml mistral-v0 mistral-v1 "
                     "mistral-v3 phi3 gemma zephyr)", name);
        else pi_error("chat template \"%s\" is unknown", name);
        return -PI_ERR_NOTFOUND;
    }
    if (!tmpl || !*tmpl) {
        if (err && errlen) snprintf(err, errlen, "the model has no tokenizer.chat_template; name a chat format");
        else pi_error("the model has no tokenizer.chat_template and no chat format was named");
        return -PI_ERR_NOTFOUND;
    }
    rc = pi_chat_detect(tmpl, out, err, errlen);
    if (rc < 0 && !(err && errlen)) pi_error("chat template not recognised");
    return rc;
}

/* ---- rendering ---- */

struct sb {
    char *p;
    size_t n, cap;
    bool oom;
    size_t lead_bos; /* bytes of the BOS text the rendering opened with (0: it did not) */
};

static void put_n(struct sb *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void put(struct sb *b, const char *s) { put_n(b, s, strlen(s)); }

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Jinja's |trim and Python's str.strip() on ASCII whitespace. */
static void put_trim(struct sb *b, const char *s)
{
    size_t n = strlen(s);
    while (n && is_ws(*s)) s++, n--;
    while (n && is_ws(s[n - 1])) n--;
    put_n(b, s, n);
}

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_BAD };

static enum role role_of(const char *r)
{
    if (!r) return ROLE_BAD;
    if (strcmp(r, "system") == 0) return ROLE_SYSTEM;
    if (strcmp(r, "user") == 0) return ROLE_USER;
    if (strcmp(r, "assistant") == 0) return ROLE_ASSISTANT;
    return ROLE_BAD;
}

struct conv {
    const struct pi_chat_msg *m;
    size_t n;
    const char *sys; /* a leading system message, split off (NULL when none) */
    const char *bos, *eos;
    bool gen;
};

/* The BOS text, remembered when it opens the rendering (pi_chat_apply strips exactly that one). */
static void put_bos(struct sb *b, const struct conv *c)
{
    if (b->n == 0) b->lead_bos = strlen(c->bos);
    put(b, c->bos);
}

/* chatml (e.g. teknium/OpenHermes-2.5-Mistral-7B, Qwen): every role as written. */
static void r_chatml(struct sb *b, const struct conv *c)
{
    for (size_t i = 0; i < c->n; i++) {
        put(b, "<|im_start|>"), put(b, c->m[i].role), put(b, "\n"), put(b, c->m[i].content), put(b, "<|im_end|>\n");
    }
    if (c->gen) put(b, "<|im_start|>assistant\n");
}

/* meta-llama/Meta-Llama-3-8B-Instruct: BOS, then each message with its content trimmed. */
static void r_llama3(struct sb *b, const struct conv *c)
{
    put_bos(b, c);
    for (size_t i = 0; i < c->n; i++) {
        put(b, "<|start_header_id|>"), put(b, c->m[i].role), put(b, "<|end_header_id|>\n\n");
        put_trim(b, c->m[i].content), put(b, "<|eot_id|>");
    }
    if (c->gen) put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* meta-llama/Llama-2-7b-chat-hf: the system prompt wrapped in <<SYS>> joins the first message;
 * each user turn is BOS [INST] strip(content) [/INST]; answers " strip(content) EOS". */
static void r_llama2(struct sb *b, const struct conv *c)
{
    for (size_t i = 0; i < c->n; i++) {
        struct sb content = {0};
        if (i == 0 && c->sys) put(&content, "<<SYS>>\n"), put(&content, c->sys), put(&content, "\n<</SYS>>\n\n");
        put(&content, c->m[i].content);
        if (content.oom) b->oom = true;
        if (role_of(c->m[i].role) == ROLE_USER) put_bos(b, c), put(b, "[INST] "), put_trim(b, content.p), put(b, " [/INST]");
        else put(b, " "), put_trim(b, content.p), put(b, " "), put(b, c->eos);
        free(content.p);
    }
}

/* mistralai v1 (Mistral-7B-Instruct-v0.1/v0.2 updated templates): system joins the first user turn. */
static void r_mistral_v1(struct sb *b, const struct conv *c)
{
    put_bos(b, c);
    for (size_t i = 0; i < c->n; i++) {
        if (role_of(c->m[i].role) == ROLE_USER) {
            put(b, " [INST] ");
            if (i == 0 && c->sys) put(b, c->sys), put(b, "\n\n");
            put(b, c->m[i].content), put(b, " [/INST]");
        } else {
            put(b, " "), put(b, c->m[i].content), put(b, c->eos);
        }
    }
}

/* mistralai v3 (Mistral-7B-Instruct-v0.3, Mistral-Large-Instruct-2407): system joins the last
 * message when that is a user turn (and is dropped otherwise, as the template does); answers are
 * trimmed. */
static void r_mistral_v3(struct sb *b, const struct conv *c)
{
    put_bos(b, c);
    for (size_t i = 0; i < c->n; i++) {
        if (role_of(c->m[i].role) == ROLE_USER) {
            put(b, "[INST] ");
            if (i + 1 == c->n && c->sys) put(b, c->sys), put(b, "\n\n");
            put(b, c->m[i].content), put(b, "[/INST]");
        } else {
            put(b, " "), put_trim(b, c->m[i].content), put(b, c->eos);
        }
    }
}

/* microsoft/Phi-3-small-8k-instruct (and Phi-3.5-mini): every role as <|role|>. */
static void r_phi3(struct sb *b, const struct conv *c)
{
    put_bos(b, c);
    for (size_t i = 0; i < c->n; i++) {
        put(b, "<|"), put(b, c->m[i].role), put(b, "|>\n"), put(b, c->m[i].content), put(b, "<|end|>\n");
    }
    put(b, c->gen ? "<|assistant|>\n" : c->eos);
}

/* google/gemma-3-*-it: BOS; the system prompt + "\n\n" opens the first turn; assistant is "model";
 * contents trimmed. (gemma-1/2 templates reject a system message; this is what Gemma 3 renders.) */
static void r_gemma(struct sb *b, const struct conv *c)
{
    put_bos(b, c);
    for (size_t i = 0; i < c->n; i++) {
        put(b, "<start_of_turn>"), put(b, role_of(c->m[i].role) == ROLE_ASSISTANT ? "model" : c->m[i].role), put(b, "\n");
        if (i == 0 && c->sys) put(b, c->sys), put(b, "\n\n");
        put_trim(b, c->m[i].content), put(b, "<end_of_turn>\n");
    }
    if (c->gen) put(b, "<start_of_turn>model\n");
}

/* HuggingFaceH4/zephyr-7b-beta: <|role|>\n content EOS \n; the generation prompt follows the last
 * message (so an empty conversation renders nothing). */
static void r_zephyr(struct sb *b, const struct conv *c)
{
    for (size_t i = 0; i < c->n; i++) {
        put(b, "<|"), put(b, c->m[i].role), put(b, "|>\n"), put(b, c->m[i].content), put(b, c->eos), put(b, "\n");
        if (i + 1 == c->n && c->gen) put(b, "<|assistant|>\n");
    }
}

/* mistralai/Mistral-7B-Instruct-v0.1/v0.2 (original templates): BOS, "[INST] user [/INST]", answers
 * followed directly by EOS. The template rejects a system message; like llama.cpp, we put it with
 * a newline before the first user message. */
static void r_mistral_v0(struct sb *b, const struct conv *c)
{
    put_bos(b, c);
    for (size_t i = 0; i < c->n; i++) {
        if (role_of(c->m[i].role) == ROLE_USER) {
            put(b, "[INST] ");
            if (i == 0 && c->sys) put(b, c->sys), put(b, "\n");
            put(b, c->m[i].content), put(b, " [/INST]");
        } else {
            put(b, c->m[i].content), put(b, c->eos);
        }
    }
}

/* Check roles; for the formats with one leading system message, split it off. */
static int prepare(enum pi_chat_format f, struct conv *c)
{
    bool split = f == PI_CHAT_LLAMA2 || f == PI_CHAT_MISTRAL_V0 || f == PI_CHAT_MISTRAL_V1 || f == PI_CHAT_MISTRAL_V3 ||
                 f == PI_CHAT_GEMMA;
    for (size_t i = 0; i < c->n; i++) {
        enum role r = role_of(c->m[i].role);
        if (r == ROLE_BAD) {
            pi_error("chat: message %zu has role \"%s\" (system, user or assistant)", i, c->m[i].role ? c->m[i].role : "(null)");
            return -PI_ERR_INVAL;
        }
        if (!c->m[i].content) {
            pi_error("chat: message %zu has no content", i);
            return -PI_ERR_INVAL;
        }
        if (split && r == ROLE_SYSTEM && i > 0) {
            pi_error("chat: format %s takes a system message only first (message %zu)", pi_chat_name(f), i);
            return -PI_ERR_INVAL;
        }
    }
    if (split && c->n && role_of(c->m[0].role) == ROLE_SYSTEM) {
        c->sys = c->m[0].content;
        c->m++;
        c->n--;
    }
    return 0;
}

char *pi_chat_apply(enum pi_chat_format f, const struct pi_chat_msg *msgs, size_t n, bool add_generation_prompt,
                    const char *bos, const char *eos, int *err)
{
    static void (*const render[PI_CHAT_FORMAT_COUNT])(struct sb *, const struct conv *) = {
        r_llama2, r_llama3, r_chatml, r_mistral_v1, r_mistral_v3, r_phi3, r_gemma, r_zephyr, r_mistral_v0,
    };
    struct conv c = {msgs, n, NULL, bos ? bos : "<s>", eos ? eos : "</s>", add_generation_prompt};
    struct sb b = {0};
    PI_ASSERT((unsigned)f < PI_CHAT_FORMAT_COUNT && err && (msgs || n == 0));
    *err = prepare(f, &c);
    if (*err < 0) return NULL;
    put(&b, "");
    render[f](&b, &c);
    if (b.oom) {
        free(b.p);
        *err = -PI_ERR_NOMEM;
        return NULL;
    }
    /* The leading BOS is the tokenizer's to add: the one the format opened with, not text that only
     * happens to start like it (chatml's "<|im_start|>" when that is the vocabulary's BOS). */
    if (b.lead_bos) memmove(b.p, b.p + b.lead_bos, b.n - b.lead_bos + 1);
    *err = 0;
    return b.p;
}
