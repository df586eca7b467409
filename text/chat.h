/*
 * text/chat.h - chat templates: turn a conversation into the prompt text a chat model was trained on.
 *
 * GGUF files carry their model's Jinja template (tokenizer.chat_template). pinfer does not run
 * Jinja: it recognises which of its built-in formats the template is by marker substrings (as
 * llama.cpp's llm_chat_detect_template does) and renders that format in C, reproducing what the
 * real template renders for system/user/assistant messages. A template it does not recognise is
 * an error naming the known formats, never a silent fallback; the user can name a format instead
 * (config / --chat-template).
 *
 * Output convention: the rendering without its leading BOS (pi_tokenize adds BOS); BOS/EOS inside
 * the text (llama2's "</s><s>", mistral's "</s>") are spelt with the vocabulary's texts and must be
 * tokenized with parse_special = true, as must the format's own markers (<|im_start|>, ...).
 */
#ifndef PI_TEXT_CHAT_H
#define PI_TEXT_CHAT_H

#include <stddef.h>
#include <stdbool.h>

enum pi_chat_format {
    PI_CHAT_LLAMA2 = 0,     /* Llama-2-chat: [INST] <<SYS>>..<</SYS>> .. [/INST] answer </s><s>[INST] */
    PI_CHAT_LLAMA3,         /* <|start_header_id|>role<|end_header_id|>\n\n..<|eot_id|> */
    PI_CHAT_CHATML,         /* <|im_start|>role\n..<|im_end|>\n (Qwen, OpenHermes, ...) */
    PI_CHAT_MISTRAL_V1,     /* " [INST] sys\n\nuser [/INST] answer</s>" */
    PI_CHAT_MISTRAL_V3,     /* "[INST] user[/INST] answer</s>", system joins the last user turn */
    PI_CHAT_PHI3,           /* <|role|>\n..<|end|>\n */
    PI_CHAT_GEMMA,          /* <start_of_turn>user|model\n..<end_of_turn>\n */
    PI_CHAT_ZEPHYR,         /* <|role|>\n..EOS\n */
    PI_CHAT_MISTRAL_V0,     /* "[INST] user [/INST]answer</s>" (Mistral-7B-Instruct v0.1/v0.2 originals) */
    PI_CHAT_FORMAT_COUNT,
};

struct pi_chat_msg {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* NUL-terminated UTF-8 */
};

/* The format's name ("llama2", "llama3", "chatml", "mistral-v0", "mistral-v1", "mistral-v3", "phi3",
 * "gemma", "zephyr"); never NULL. */
const char *pi_chat_name(enum pi_chat_format f);

/* The format called name; -PI_ERR_NOTFOUND for an unknown name. */
int pi_chat_from_name(const char *name, enum pi_chat_format *out);

/* Recognise a Jinja template (or a format name given as the template). Returns 0, or
 * -PI_ERR_UNSUPPORTED when it is none of the built-in formats (including formats recognised but not
 * built in, e.g. mistral v7 or tekken), with a reason in err. */
int pi_chat_detect(const char *tmpl, enum pi_chat_format *out, char *err, size_t errlen);

/* The format to use: name when not NULL/empty (must be known), else detected from tmpl; tmpl NULL
 * and no name is an error too. 0 or a negative enum pi_err, with one line in err (logged instead when
 * err is NULL). */
int pi_chat_resolve(const char *name, const char *tmpl, enum pi_chat_format *out, char *err, size_t errlen);

/* Render msgs[0..n) in format f; add_generation_prompt appends the opening of the assistant's turn
 * where the format has one. bos/eos: the vocabulary's BOS/EOS texts ("<s>", "</s>"; NULL = those).
 * Returns a malloc'd NUL-terminated string (caller frees), or NULL with *err = -PI_ERR_INVAL (a role
 * other than system/user/assistant, a NULL content, or a system message where the format allows none) or
 * -PI_ERR_NOMEM. */
char *pi_chat_apply(enum pi_chat_format f, const struct pi_chat_msg *msgs, size_t n, bool add_generation_prompt,
                    const char *bos, const char *eos, int *err);

#endif
