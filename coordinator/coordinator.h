/*
 * coordinator/coordinator.h - the pieces of pi-coordinator that main() strings together: opening
 * the model and its tokenizer with errors that name where the path came from, building the engine
 * the configuration asks for, and the two modes (one-shot and server).
 */
#ifndef PI_COORDINATOR_COORDINATOR_H
#define PI_COORDINATOR_COORDINATOR_H

#include "coordinator/engine.h"
#include "coordinator/options.h"
#include "model/model.h"
#include "model/sidecar.h"
#include "text/tokenizer.h"

/* Exit statuses of pi-coordinator. */
enum { PI_EXIT_OK = 0, PI_EXIT_FAILURE = 1, PI_EXIT_USAGE = 2 };

/* The model, its sidecar and tokenizer of a run. */
struct pi_coord_model {
    pi_model_t *model;      /* weights bound (packed when the coordinator computes itself) */
    pi_tokenizer_t *tok;
    /* pi-profile's statistics for this model (model/sidecar.h), for the placement; NULL when none.
     * Owned (freed by pi_coord_model_close); const to its readers. */
    const struct pi_sidecar *sidecar;
    /* Sparse execution ([sparsity] mode resolved by pi_coord_sparsity_open): the mode, and the
     * predictors when it is not off (the in-process engine computes with them; the pipeline's GPU
     * worker opens its own from the same file). */
    enum pi_sparsity sparsity;
    struct pi_predictors pred;
    float *gate_min; /* a SwiGLU model's activation thresholds (n_layer, n_ff) when not off, else NULL */
    char sparsity_line[320]; /* what was chosen and why, with the predictors' source (logged at open) */
};

/* Open o->cfg.model_path. with_weights: pack the FFN for computing in this process (backend
 * none); otherwise metadata only. On failure prints one line naming where the path was set
 * ("FILE:LINE: [model] path: ...") and returns a negative pi_err. Then the sidecar: [model] sidecar
 * when set (it must exist), else MODEL.pinfer.gguf when present; one that is malformed or made for
 * another model fails the open with one line "pi-coordinator: sidecar PATH: reason". */
int pi_coord_model_open(const struct pi_coord_opts *o, bool with_weights, struct pi_coord_model *cm);
void pi_coord_model_close(struct pi_coord_model *cm);

/* The model's sidecar (o->cfg.sidecar_path, or MODEL.pinfer.gguf beside o->cfg.model_path) into
 * cm->sidecar for cm->model, as pi_coord_model_open reads it: absent and not asked for is no error;
 * asked for and absent, malformed or another model's is one line "PROG: sidecar PATH: reason" on
 * stderr and a negative pi_err. Freed by pi_coord_model_close. */
int pi_coord_sidecar_open(const struct pi_coord_opts *o, struct pi_coord_model *cm, const char *prog);

/* The model's sidecar path (buf, len bytes): [model] sidecar when set, else MODEL.pinfer.gguf beside
 * the model; NULL when the model's path has no such default. The file need not exist. */
const char *pi_coord_sidecar_file(const struct pi_coord_opts *o, char *buf, size_t len);

/* Resolve o->cfg.sparsity.mode for cm->model into cm->sparsity and cm->pred (compute/sparse.h), the
 * choice with the predictors' source into cm->sparsity_line ("sparsity safe (predictors from the model,
 * rank 16)"; pi_coord_engine_new logs it); a
 * mode the model cannot run (SwiGLU, no predictors) is one line "PROG: --sparsity: reason" on stderr
 * and a negative pi_err. pi_coord_model_open calls it; freed by pi_coord_model_close. */
int pi_coord_sparsity_open(const struct pi_coord_opts *o, struct pi_coord_model *cm, const char *prog);

/* Build the engine of o->cfg: in-process for backend none, else the pipeline (spawning the
 * workers). NULL on failure (logged). */
pi_engine_t *pi_coord_engine_new(const struct pi_coord_opts *o, const struct pi_coord_model *cm, const char *argv0);

/* Threads for in-process computing: [cpu] threads, or the online CPUs when 0. */
int pi_coord_threads(const struct pi_coord_opts *o);

/* The conversation msgs (n) rendered in the chat format of o (--chat-template, else the one recognised
 * from t's tokenizer.chat_template), the assistant's turn opened: a malloc'd string to tokenize with
 * special tokens parsed, or NULL after one line "pi-coordinator: WHAT: reason" on stderr. */
struct pi_chat_msg;
char *pi_coord_chat_render(const struct pi_coord_opts *o, const pi_tokenizer_t *t, const struct pi_chat_msg *msgs, size_t n,
                           const char *what);

/* --logit-bias ids against the model's vocabulary of n_vocab: 0, or -PI_ERR_RANGE after one line on
 * stderr. */
int pi_coord_check_bias(const struct pi_coord_opts *o, int n_vocab);

/* The request fields that only the command line sets (--stop, --logit-bias) from o into r (borrowed:
 * o outlives the request). */
struct pi_gen_request;
void pi_coord_request_extras(const struct pi_coord_opts *o, struct pi_gen_request *r);

/* The modes; each returns an exit status. */
int pi_coord_run_oneshot(const struct pi_coord_opts *o, const char *argv0);
int pi_coord_run_server(const struct pi_coord_opts *o, const char *argv0);
int pi_coord_run_interactive(const struct pi_coord_opts *o, const char *argv0);

#endif
