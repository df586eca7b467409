/*
 * tests/unit/test-chat.c - chat formats against what the models' own Jinja templates render.
 *
 * Conversation: system "You are a helpful assistant", user "Hello", assistant "  Hi there  " (the
 * spaces show which templates trim), user "Who are you", with add_generation_prompt. Each expected
 * string below was worked out by hand from the template quoted next to it (the templates are the
 * models' tokenizer_config.json chat_template, as collected in llama.cpp's
 * tests/test-chat-template.cpp and models/templates/), and is the template's rendering with its
 * leading bos_token removed (pi_tokenize adds BOS). Each template must also be recognised as its
 * format.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "text/chat.h"
#include "lib/common.h"
#include "model/gguf.h"
#include "text/tokenizer.h"
#include "tests/tap.h"

static const struct pi_chat_msg conv[] = {
    {"system", "You are a helpful assistant"},
    {"user", "Hello"},
    {"assistant", "  Hi there  "},
    {"user", "Who are you"},
};

struct tcase {
    const char *source;
    const char *tmpl;
    enum pi_chat_format fmt;
    const char *bos, *eos;
    const char *want;
    bool no_system; /* the template raises on a system message: render the conversation without it */
};

static const struct tcase cases[] = {
    {"teknium/OpenHermes-2.5-Mistral-7B (chatml)",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
     "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
     PI_CHAT_CHATML, "<s>", "</s>",
     "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
     "<|im_start|>assistant\n  Hi there  <|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n", false},
    {"meta-llama/Meta-Llama-3-8B-Instruct",
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
     "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
     "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
     PI_CHAT_LLAMA3, "<|begin_of_text|>", "<|eot_id|>",
     "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
     "Hi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n", false},
    {"meta-llama/Llama-2-7b-chat-hf (no generation prompt in this template)",
     "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
     "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
     "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
     "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
     "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
     "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
     "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
     PI_CHAT_LLAMA2, "<s>", "</s>",
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Who are you [/INST]", false},
    {"mistralai 'v1' template (Mistral-7B-Instruct-v0.1/v0.2 with a system prompt)",
     "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set "
     "loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n"
     "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message['role'] == 'user' %}\n        "
     "{%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + "
     "message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + "
     "' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + "
     "message['content'] + eos_token}}\n    {%- endif %}\n{%- endfor %}\n",
     PI_CHAT_MISTRAL_V1, "<s>", "</s>",
     " [INST] You are a helpful assistant\n\nHello [/INST]   Hi there  </s> [INST] Who are you [/INST]", false},
    {"mistralai 'v3' template (Mistral-7B-Instruct-v0.3, Mistral-Large-Instruct-2407; tools part abridged)",
     "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    "
     "{%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n"
     "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        "
     "{%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] [\" }}"
     "{{- \"[/AVAILABLE_TOOLS]\" }}\n        {%- endif %}\n        {%- if loop.last and system_message is defined %}\n"
     "            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        "
     "{%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    "
     "{%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n"
     "    {%- endif %}\n{%- endfor %}\n",
     PI_CHAT_MISTRAL_V3, "<s>", "</s>",
     "[INST] Hello[/INST] Hi there</s>[INST] You are a helpful assistant\n\nWho are you[/INST]", false},
    {"microsoft/Phi-3-small-8k-instruct",
     "{{ bos_token }}{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + "
     "'<|end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}"
     "{% endif %}",
     PI_CHAT_PHI3, "<s>", "<|endoftext|>",
     "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n  Hi there  <|end|>\n"
     "<|user|>\nWho are you<|end|>\n<|assistant|>\n", false},
    {"google/gemma-3-4b-it (text content; system prompt + \"\\n\\n\" opens the first user turn)",
     "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- set first_user_prefix = "
     "messages[0]['content'] + '\\n\\n' -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    "
     "{%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n"
     "{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'assistant') -%}\n        "
     "{%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
     "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n    "
     "{{ message['content'] | trim }}\n    {{ '<end_of_turn>\\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
     "    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n",
     PI_CHAT_GEMMA, "<bos>", "<eos>",
     "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
     "<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\n", false},
    {"HuggingFaceH4/zephyr-7b-beta (rendered with trim_blocks, as transformers does)",
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + "
     "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
     "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
     "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
     PI_CHAT_ZEPHYR, "<s>", "</s>",
     "<|system|>\nYou are a helpful assistant</s>\n<|user|>\nHello</s>\n<|assistant|>\n  Hi there  </s>\n"
     "<|user|>\nWho are you</s>\n<|assistant|>\n", false},
    {"mistralai/Mistral-7B-Instruct-v0.2 (original template; raises on a system message)",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
     "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
     "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
     "are supported!') }}{% endif %}{% endfor %}",
     PI_CHAT_MISTRAL_V0, "<s>", "</s>", "[INST] Hello [/INST]  Hi there  </s>[INST] Who are you [/INST]", true},
};

static void formats(void)
{
    for (size_t i = 0; i < PI_ARRAY_LEN(cases); i++) {
        const struct tcase *c = &cases[i];
        enum pi_chat_format f = PI_CHAT_FORMAT_COUNT;
        char err[256] = "";
        int rc = pi_chat_detect(c->tmpl, &f, err, sizeof err);
        tap_ok(rc == 0 && f == c->fmt, "%s: recognised as %s (got %s%s)", c->source, pi_chat_name(c->fmt),
               rc == 0 ? pi_chat_name(f) : "error: ", rc == 0 ? "" : err);
        const struct pi_chat_msg *m = c->no_system ? conv + 1 : conv;
        char *out = pi_chat_apply(c->fmt, m, PI_ARRAY_LEN(conv) - c->no_system, true, c->bos, c->eos, &rc);
        char name[160];
        snprintf(name, sizeof name, "%s: rendering matches the template's", pi_chat_name(c->fmt));
        tap_is_str(out, c->want, name);
        free(out);
        tap_ok(pi_chat_from_name(pi_chat_name(c->fmt), &f) == 0 && f == c->fmt, "%s: selectable by name", pi_chat_name(c->fmt));
    }
}

static void errors(void)
{
    enum pi_chat_format f;
    char err[256] = "";
    int rc = pi_chat_resolve(NULL, "{{ messages | tojson }}", &f, err, sizeof err);
    tap_ok(rc < 0 && strstr(err, "known:"), "an unknown template is an error naming the known formats (%s)", err);
    rc = pi_chat_resolve("llama9", NULL, &f, err, sizeof err);
    tap_ok(rc == -PI_ERR_NOTFOUND, "an unknown format name is an error");
    rc = pi_chat_resolve(NULL, NULL, &f, err, sizeof err);
    tap_ok(rc < 0 && err[0], "no template and no name is an error (%s)", err);
    rc = pi_chat_resolve("gemma", "{% for m in messages %}<|im_start|>{% endfor %}", &f, err, sizeof err);
    tap_ok(rc == 0 && f == PI_CHAT_GEMMA, "a name overrides the model's template");
    rc = pi_chat_detect("{{ '[SYSTEM_PROMPT]' }}[INST]", &f, err, sizeof err);
    tap_ok(rc == -PI_ERR_UNSUPPORTED, "mistral v7 is recognised but not built in: an error, not another format");
    struct pi_chat_msg bad[] = {{"user", "hi"}, {"tool", "x"}};
    char *s = pi_chat_apply(PI_CHAT_CHATML, bad, 2, true, NULL, NULL, &rc);
    tap_ok(!s && rc == -PI_ERR_INVAL, "an unknown role is refused");
    struct pi_chat_msg no_content[] = {{"user", "hi"}, {"assistant", NULL}};
    for (int fmt = 0; fmt < PI_CHAT_FORMAT_COUNT; fmt++) {
        s = pi_chat_apply((enum pi_chat_format)fmt, no_content, 2, true, NULL, NULL, &rc);
        if (s || rc != -PI_ERR_INVAL) break;
    }
    tap_ok(!s && rc == -PI_ERR_INVAL, "a message without content is refused in every format");
    free(s);
    struct pi_chat_msg late_sys[] = {{"user", "hi"}, {"system", "x"}};
    s = pi_chat_apply(PI_CHAT_LLAMA2, late_sys, 2, true, NULL, NULL, &rc);
    tap_ok(!s && rc == -PI_ERR_INVAL, "llama2: a system message after the first is refused");
    s = pi_chat_apply(PI_CHAT_MISTRAL_V0, conv, PI_ARRAY_LEN(conv), true, NULL, NULL, &rc);
    tap_is_str(s, "[INST] You are a helpful assistant\nHello [/INST]  Hi there  </s>[INST] Who are you [/INST]",
               "mistral-v0: a system message joins the first user turn after a newline (llama.cpp's convention)");
    free(s);
    s = pi_chat_apply(PI_CHAT_CHATML, NULL, 0, true, NULL, NULL, &rc);
    tap_is_str(s, "<|im_start|>assistant\n", "chatml: empty conversation renders only the generation prompt");
    free(s);
    /* Only a BOS the format opened with is stripped, not text that merely starts like it (a review:
     * with "<|im_start|>" as the vocabulary's BOS, chatml lost its first marker) */
    struct pi_chat_msg one[] = {{"user", "hi"}};
    s = pi_chat_apply(PI_CHAT_CHATML, one, 1, true, "<|im_start|>", NULL, &rc);
    tap_is_str(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "chatml keeps its opening marker when it is also the BOS text");
    free(s);
    s = pi_chat_apply(PI_CHAT_ZEPHYR, one, 1, true, "<", NULL, &rc);
    tap_ok(s && strncmp(s, "<|user|>", 8) == 0, "zephyr keeps its opening '<' when the BOS text is \"<\": %s", s ? s : "(null)");
    free(s);
    s = pi_chat_apply(PI_CHAT_GEMMA, one, 1, true, "<bos>", NULL, &rc);
    tap_ok(s && strncmp(s, "<start_of_turn>", 15) == 0, "gemma's leading BOS is still left to the tokenizer: %s", s ? s : "(null)");
    free(s);
}

/* The template in the phi-3 vocabulary fixture is recognised, and a llama2 rendering tokenizes its
 * inline </s><s> to the EOS and BOS ids when special tokens are parsed. */
static void with_vocab(void)
{
    char path[1024], err[256];
    const char *root = getenv("PI_SRCDIR");
    snprintf(path, sizeof path, "%s/tests/data/ggml-vocab-phi-3.gguf", root && *root ? root : ".");
    pi_gguf_t *g = NULL;
    if (pi_gguf_open(path, &g, err, sizeof err) < 0) tap_bail("open %s: %s", path, err);
    pi_tokenizer_t *t = pi_tokenizer_new(g, err, sizeof err);
    if (!t) tap_bail("tokenizer: %s", err);
    enum pi_chat_format f;
    int rc = pi_chat_resolve(NULL, pi_tokenizer_chat_template(t), &f, err, sizeof err);
    tap_ok(rc == 0 && f == PI_CHAT_PHI3, "phi-3 vocabulary's own chat_template -> phi3");
    char *s = pi_chat_apply(PI_CHAT_LLAMA2, conv, PI_ARRAY_LEN(conv), true, "<s>", "</s>", &rc);
    int32_t ids[256];
    size_t n = 0, eos_bos = 0;
    rc = pi_tokenize(t, s, strlen(s), true, true, ids, 256, &n);
    for (size_t i = 0; rc == 0 && i + 1 < n; i++) eos_bos += ids[i] == 2 && ids[i + 1] == 1;
    tap_ok(rc == 0 && ids[0] == 1 && eos_bos == 1, "llama2 rendering tokenizes \"</s><s>\" to ids 2 1 with parse_special");
    free(s);
    pi_tokenizer_destroy(&t);
    pi_gguf_destroy(&g);
}

int main(void)
{
    formats();
    errors();
    with_vocab();
    return tap_done();
}
