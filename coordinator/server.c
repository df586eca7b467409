/*
 * coordinator/server.c - pi-coordinator's server mode: the control socket (ipc/control.h) answering
 * pi-ctl (status, workers, generate, shutdown) until SIGTERM/SIGINT or a SHUTDOWN request.
 *
 * DESIGN: two threads.
 *   - The main thread owns the control ROUTER and polls it together with a signalfd (SIGTERM, SIGINT)
 *     and the inproc PAIR socket to the generation thread. It answers status requests itself, so
 *     status stays live during a generation, and forwards text chunks and ends to the client.
 *   - The generation thread owns the engine: it creates it (so the workers are forked from a thread
 *     that lives as long as they do: PR_SET_PDEATHSIG follows the forking thread), runs one request
 *     at a time, and destroys it at shutdown. Requests arriving meanwhile wait in the PAIR queue.
 * Messages between the two threads are fixed structs copied through the PAIR socket.
 * Neither thread may be held by a client. The main thread never blocks on a send: at most
 * MAX_QUEUED generation requests are accepted at a time (more are refused with "busy"), so the PAIR
 * queue (1000 messages) always has room for a job; replies to clients are sent without waiting
 * (SNDTIMEO 0), and a client whose reply cannot be queued (it stopped reading, or went away) has its
 * request stopped: the main thread names the job (its seq) in abort_seq, and the generation thread's
 * chunk callback returns an error at its next chunk. The main thread handles at most EVENT_BURST
 * events between two polls of the control socket and the signals. So the generation thread's sends
 * to the main thread, which do wait (up to GEN_SEND_MS), always drain.
 * Any malformed message on the control socket is logged by the decoder (naming the defect), answered
 * with an ERROR, and otherwise ignored.
 *
 * Descriptors: libzmq aborts the whole process when accept() on an ipc:// listener fails with EMFILE,
 * so the coordinator must never let a client flood use up its descriptors. At start the soft limit is
 * raised to the hard one; a socket monitor on the control socket counts the connections open
 * (accepted minus disconnected), and at the cap ([control] max_connections, or half the descriptors
 * still free, whichever is smaller) the main thread unbinds the listener - nginx's pause of accept() -
 * and binds it again PAUSE_MS later. Unbinding drops the connections made through the listener (libzmq
 * ties them to it), so the count starts from 0 again. The monitor's events reach the main thread a
 * little after the I/O thread accepted, which is why the cap leaves half the free descriptors unused:
 * a burst that arrives before the pause has that much room. A connection that never completes the
 * ZeroMQ handshake is dropped after HANDSHAKE_MS, so idle sockets cannot pile up to the cap slowly.
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/generate.h"
#include "coordinator/pipeline.h"
#include "coordinator/supervisor.h"
#include "ipc/control.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define ID_MAX 256
#define GEN_EP "inproc://pinfer-generate"
#define MAX_QUEUED 64     /* generation requests accepted and not yet ended, at most */
#define EVENT_BURST 256   /* generation-thread events handled between two polls */
#define GEN_SEND_MS 5000  /* how long the generation thread waits to hand an event to the main thread */
#define MON_EP "inproc://pinfer-control-monitor"
#define PAUSE_MS 1000     /* how long the control listener stays unbound after reaching the cap */
#define HANDSHAKE_MS 5000 /* a control connection must complete the ZeroMQ handshake within this */

/* main -> generation thread */
struct job {
    int quit;                  /* 1: destroy the engine and end */
    uint8_t id[ID_MAX];        /* client routing id */
    size_t id_len;
    uint64_t request_id;
    uint64_t seq;              /* the server's number of this job (abort_seq) */
    uint32_t n_predict;
    uint64_t seed;
    float temp;
    char *prompt;              /* owned by the generation thread once sent */
};

/* generation thread -> main */
enum { EV_READY = 1, EV_CHUNK = 2, EV_END = 3, EV_FAILED = 4, EV_EXIT = 5 };
struct event {
    int kind;
    uint8_t id[ID_MAX];
    size_t id_len;
    uint64_t request_id;
    uint64_t seq;              /* the job's */
    int32_t status;
    uint32_t n_prompt, n_generated;
    char text[512];            /* chunk text (len bytes) or the end's reason */
    size_t len;
};

struct server {
    const struct pi_coord_opts *o;
    const struct pi_coord_model *cm;
    void *zctx;
    void *gen_sock;            /* generation thread's end of the PAIR */
    pi_engine_t *engine;       /* owned by the generation thread; read-only for status */
    pthread_mutex_t engine_mu; /* held by the generation thread to destroy the engine, by the main
                                  thread while it reads it (status, the shutdown's cancel) */
    int64_t t_start;
    _Atomic int busy;          /* generation requests accepted and not yet ended */
    _Atomic int cancel;        /* shutdown asked while generating */
    _Atomic uint64_t abort_seq; /* the job whose client stopped taking replies: stop it (0: none) */
    uint64_t next_seq;         /* main thread: the last job's seq */
    uint64_t dropped_seq;      /* main thread: the job whose replies are no longer sent */
    _Atomic uint64_t requests, tokens;
    char endpoint[512];
    char bound_ep[512];        /* the endpoint as libzmq names it (ZMQ_LAST_ENDPOINT), for zmq_unbind */
    /* Connection accounting (main thread only; see DESIGN). */
    void *mon;                 /* PAIR receiving the control socket's monitor events */
    int conns;                 /* connections accepted and not yet disconnected, as the events say */
    int conn_cap;              /* the most held at once */
    bool paused;               /* the listener is unbound until resume_ns */
    struct stat sock_st;       /* the ipc:// socket file we bound last (st_ino 0: none): the only
                                  thing unlinked at exit */
    int64_t resume_ns;
    uint64_t pauses;
};

static void send_event(struct server *s, const struct event *ev)
{
    if (zmq_send(s->gen_sock, ev, sizeof *ev, 0) < 0) pi_warn("generation thread: event not delivered");
}

struct emit_ctx {
    struct server *s;
    const struct job *j;
};

/* The generation's stop question (between prompt batches, and before each chunk): the shutdown, or this job's client gone. */
static int job_stopped(void *ctx)
{
    const struct emit_ctx *e = ctx;
    return atomic_load(&e->s->cancel) || atomic_load(&e->s->abort_seq) == e->j->seq;
}

/* Stream text as CHUNK events of at most sizeof ev.text bytes. The protocol's strings hold no NUL
 * (ipc/control.h), so a NUL byte of the text (a byte-fallback token <0x00>) is sent as U+FFFD. */
static int emit_chunk(void *ctx, const char *text, size_t len)
{
    struct emit_ctx *e = ctx;
    if (job_stopped(ctx)) return -1;
    static const char repl[3] = {'\xef', '\xbf', '\xbd'};
    struct event ev = {.kind = EV_CHUNK, .id_len = e->j->id_len, .request_id = e->j->request_id, .seq = e->j->seq};
    memcpy(ev.id, e->j->id, e->j->id_len);
    for (size_t i = 0; i < len; i++) {
        const size_t need = text[i] ? 1 : sizeof repl;
        if (ev.len + need > sizeof ev.text) {
            send_event(e->s, &ev);
            ev.len = 0;
        }
        if (text[i]) ev.text[ev.len++] = text[i];
        else memcpy(ev.text + ev.len, repl, sizeof repl), ev.len += sizeof repl;
    }
    if (ev.len) send_event(e->s, &ev);
    return 0;
}

/* Run one generation request and report its end. */
static void run_job(struct server *s, struct job *j)
{
    struct pi_gen_request r = {0};
    r.prompt = j->prompt;
    r.n_predict = j->n_predict;
    r.stop = job_stopped;
    pi_gen_params_from_config(&s->o->cfg, &r.sample);
    r.sample.temperature = j->temp;
    r.sample.seed = j->seed;
    struct pi_gen_result res = {0};
    struct emit_ctx ec = {s, j};
    /* A request still queued when the shutdown came is ended at once, without touching the engine. */
    int rc = atomic_load(&s->cancel) ? -PI_ERR_PEER : pi_generate(s->engine, s->cm->tok, &r, emit_chunk, &ec, &res);
    struct event ev = {.kind = EV_END, .id_len = j->id_len, .request_id = j->request_id, .seq = j->seq, .status = rc,
                       .n_prompt = (uint32_t)res.n_prompt, .n_generated = (uint32_t)res.n_generated};
    memcpy(ev.id, j->id, j->id_len);
    if (rc != 0 && atomic_load(&s->cancel))
        snprintf(ev.text, sizeof ev.text, "cancelled: the coordinator is shutting down");
    else if (rc != 0 && atomic_load(&s->abort_seq) == j->seq)
        snprintf(ev.text, sizeof ev.text, "stopped: the client did not take its replies (stopped reading or went away)");
    else if (rc == -PI_ERR_PEER)
        snprintf(ev.text, sizeof ev.text, "a worker of the pipeline died during the request; the pipeline is being restarted");
    else if (rc == -PI_ERR_IO && !res.n_prompt) /* pipe_call: a restart that failed; nothing ran */
        snprintf(ev.text, sizeof ev.text, "the pipeline's workers could not be started (see the coordinator's log); "
                                          "the next request tries again");
    else if (rc == -PI_ERR_RANGE) /* the one limit a client can hit by asking: say which */
        snprintf(ev.text, sizeof ev.text, "the prompt and the %u tokens to generate do not fit the context of %d positions",
                 j->n_predict, s->engine->n_ctx);
    else if (rc != 0)
        snprintf(ev.text, sizeof ev.text, "generation failed: %s", pi_err_str(rc));
    ev.len = strlen(ev.text);
    atomic_fetch_add(&s->tokens, (uint64_t)res.n_generated);
    if (rc == 0) atomic_fetch_add(&s->requests, 1);
    send_event(s, &ev);
    if (rc == -PI_ERR_PEER && !atomic_load(&s->cancel)) {
        int r2 = s->engine->ops->reset(s->engine); /* restarts the workers now, not at the next request */
        if (r2 != 0) pi_error("restarting the pipeline failed: %s", pi_err_str(r2));
    }
}

static void *gen_main(void *arg)
{
    struct server *s = arg;
    s->engine = pi_coord_engine_new(s->o, s->cm, NULL);
    struct event ev = {.kind = s->engine ? EV_READY : EV_FAILED};
    send_event(s, &ev);
    while (s->engine) {
        struct job j;
        int n = zmq_recv(s->gen_sock, &j, sizeof j, 0);
        if (n != (int)sizeof j) {
            if (n < 0 && errno == EINTR) continue;
            break;
        }
        if (j.quit) break;
        run_job(s, &j);
        free(j.prompt);
        atomic_fetch_sub(&s->busy, 1);
    }
    pthread_mutex_lock(&s->engine_mu);
    pi_engine_destroy(&s->engine);
    pthread_mutex_unlock(&s->engine_mu);
    struct event bye = {.kind = EV_EXIT};
    send_event(s, &bye);
    return NULL;
}

static const char *role_str(int role)
{
    return role == PI_ROLE_GPU_WORKER ? "gpu" : role == PI_ROLE_CPU_WORKER ? "cpu" : "unknown";
}

static const char *state_str(enum pi_worker_state st)
{
    return st == PI_WORKER_READY ? "ready" : st == PI_WORKER_STARTING ? "starting" : "dead";
}

/* The workers as a JSON array (neurons per layer = neurons owned / layers). */
static json_t *workers_json(struct server *s)
{
    json_t *arr = json_array();
    struct pi_worker_info *w = calloc(PI_SUPER_MAX_WORKERS, sizeof *w);
    if (!arr || !w) { free(w); return arr; }
    size_t n = PI_MIN(pi_engine_pipeline_workers(s->engine, w, PI_SUPER_MAX_WORKERS), (size_t)PI_SUPER_MAX_WORKERS);
    int n_layer = s->cm->model->hp.n_layer;
    for (size_t i = 0; i < n; i++) {
        json_t *cores = json_array();
        for (uint32_t c = 0; c < w[i].n_cores; c++) json_array_append_new(cores, json_integer(w[i].cores[c]));
        json_array_append_new(arr, json_pack("{s:s, s:i, s:i, s:i, s:o, s:s, s:I, s:I, s:I}", "role", role_str(w[i].role),
                                             "index", w[i].index, "pid", (int)w[i].pid, "numa_node", w[i].numa_node,
                                             "cores", cores, "state", state_str(w[i].state), "heartbeat_age_ms",
                                             (json_int_t)w[i].heartbeat_age_ms, "neurons_per_layer",
                                             (json_int_t)(w[i].neurons / (uint64_t)n_layer), "memory_bytes",
                                             (json_int_t)w[i].mem_bytes));
    }
    free(w);
    return arr;
}

/* The placement map for status: totals, then per layer the GPU's hot count and bytes and each CPU
 * worker's cold count and bytes (compute/placement.h). JSON null without a pipeline. */
static json_t *placement_json(const struct pi_placement *pl, const pi_model_t *m)
{
    if (!pl) return json_null();
    json_t *layers = json_array();
    for (int il = 0; layers && il < pl->n_layer; il++) {
        json_t *cold = json_array(), *cold_bytes = json_array();
        for (int w = 0; cold && cold_bytes && w < pl->n_workers; w++) {
            int64_t n;
            pi_placement_cold(pl, il, w, &n);
            json_array_append_new(cold, json_integer((json_int_t)n));
            json_array_append_new(cold_bytes, json_integer((json_int_t)pi_placement_bytes(pl, m, il, 1 + w)));
        }
        int64_t nh;
        pi_placement_hot(pl, il, &nh);
        json_array_append_new(layers, json_pack("{s:I, s:I, s:o, s:o}", "hot", (json_int_t)nh, "hot_bytes",
                                                (json_int_t)pi_placement_bytes(pl, m, il, 0), "cold", cold ? cold : json_null(),
                                                "cold_bytes", cold_bytes ? cold_bytes : json_null()));
    }
    return json_pack("{s:I, s:I, s:o}", "hot_neurons", (json_int_t)pi_placement_hot_total(pl), "hot_bytes",
                     (json_int_t)pi_placement_bytes(pl, m, -1, 0), "layers", layers ? layers : json_null());
}

/* The [tune] section as resolved ({"cuda_matvec": "auto", ...}): the performance choices the workers
 * were started with, straight from the configuration table. */
static json_t *tune_json(const struct pi_config *c)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < pi_config_key_count(); i++) {
        const struct pi_config_key_info *k = pi_config_key(i);
        char val[96];
        if (strcmp(k->section, "tune") != 0) continue;
        pi_config_key_value(c, i, val, sizeof val);
        json_object_set_new(o, k->key, json_string(val));
    }
    return o;
}

/* The sparse execution for status: the mode and why, [sparsity] recall_every, the totals and per layer
 * the realised sparsity (share of (token, neuron) pairs not computed), the FFN weight bytes skipped
 * and, where measured, the predictor's recall (null otherwise), since the engine started. */
static json_t *sparsity_json(struct server *s)
{
    const pi_model_t *m = s->cm->model;
    struct pi_sparse_stats st;
    json_t *layers = json_array();
    if (!layers || pi_sparse_stats_init(&st, m) != 0) {
        json_decref(layers);
        return json_null();
    }
    const bool counted = s->engine && pi_engine_sparse_stats(s->engine, &st) == 0;
    struct pi_sparse_summary all;
    pi_sparse_summary(&st, -1, &all);
    for (int il = 0; counted && il < m->hp.n_layer; il++) {
        struct pi_sparse_summary l;
        pi_sparse_summary(&st, il, &l);
        json_array_append_new(layers, json_pack("{s:f, s:I, s:o}", "sparsity", l.sparsity, "bytes_skipped",
                                                (json_int_t)l.bytes_skipped,
                                                "recall", l.recall_true ? json_real(l.recall) : json_null()));
    }
    pi_sparse_stats_free(&st);
    return json_pack("{s:s, s:s, s:I, s:f, s:I, s:I, s:o, s:o}", "mode", pi_sparsity_name(s->cm->sparsity), "why",
                     s->cm->sparsity_line, "recall_every", (json_int_t)s->o->cfg.sparsity.recall_every, "sparsity",
                     all.sparsity, "bytes_skipped", (json_int_t)all.bytes_skipped, "bytes_total", (json_int_t)all.bytes_total,
                     "recall", all.recall_true ? json_real(all.recall) : json_null(), "layers", layers);
}

static json_t *status_json(struct server *s)
{
    const struct pi_hparams *hp = &s->cm->model->hp;
    static const char *const backends[] = {"none", "host", "cuda"};
    json_t *model = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:s}", "path", s->o->cfg.model_path, "arch", hp->arch,
                              "layers", hp->n_layer, "n_embd", hp->n_embd, "n_ff", hp->n_ff, "n_vocab", hp->n_vocab,
                              "activation", pi_ffn_act_name(hp->act));
    const struct pi_placement *pl = pi_engine_pipeline_placement(s->engine);
    const int64_t hot = pl ? pi_placement_hot_max(pl) : -1;
    return json_pack("{s:o, s:I, s:I, s:I, s:i, s:s, s:I, s:i, s:o, s:s, s:i, s:o, s:o, s:o}", "model", model, "uptime_ms",
                     (json_int_t)((pi_clock_ns() - s->t_start) / 1000000), "requests_served",
                     (json_int_t)atomic_load(&s->requests), "tokens_generated", (json_int_t)atomic_load(&s->tokens),
                     "pid", (int)getpid(), "gpu_backend", backends[s->o->cfg.gpu_backend], "hot_neurons_per_layer",
                     (json_int_t)hot, "cpu_workers", pl ? pl->n_workers : 0, "placement", placement_json(pl, s->cm->model),
                     "control", s->endpoint, "generations_in_flight", atomic_load(&s->busy), "workers", workers_json(s), "tune",
                     tune_json(&s->o->cfg), "sparsity", sparsity_json(s));
}

static void reply(void *sock, const uint8_t *id, size_t id_len, struct pi_ctl_msg *m)
{
    if (pi_ctl_send(sock, id, id_len, m) != 0) pi_warn("control: reply (%s) not sent", pi_ctl_type_name(m->type));
}

static void reply_error(void *sock, const uint8_t *id, size_t id_len, uint64_t req, int code, const char *text)
{
    struct pi_ctl_msg m = {.type = PI_CTL_ERROR, .request_id = req};
    m.u.error.code = code;
    m.u.error.text = (char *)text;
    reply(sock, id, id_len, &m);
}

/* One request on the control socket. Returns 1 when the server should shut down. */
static int on_control(struct server *s, void *ctl, void *pair)
{
    uint8_t id[ID_MAX];
    size_t id_len = sizeof id;
    struct pi_ctl_msg m;
    enum pi_ctl_defect d;
    int rc = pi_ctl_recv(ctl, id, &id_len, &m, &d);
    if (rc != 0) {
        if (rc != -PI_ERR_TIMEOUT && id_len > 0 && id_len <= sizeof id && d != PI_CTL_OK) {
            char t[128];
            snprintf(t, sizeof t, "malformed message rejected: %s", pi_ctl_defect_name(d));
            reply_error(ctl, id, id_len, 0, rc, t);
        }
        return 0;
    }
    int quit = 0;
    struct pi_ctl_msg r = {.request_id = m.request_id};
    switch (m.type) {
    case PI_CTL_STATUS_REQ:
        r.type = PI_CTL_STATUS_RESP;
        pthread_mutex_lock(&s->engine_mu);
        r.u.json = status_json(s);
        pthread_mutex_unlock(&s->engine_mu);
        if (r.u.json) reply(ctl, id, id_len, &r);
        else reply_error(ctl, id, id_len, m.request_id, -PI_ERR_NOMEM, "status: out of memory");
        json_decref(r.u.json);
        break;
    case PI_CTL_SHUTDOWN:
        r.type = PI_CTL_SHUTDOWN;
        reply(ctl, id, id_len, &r);
        pi_info("shutdown requested over the control socket");
        quit = 1;
        break;
    case PI_CTL_GENERATE: {
        if (atomic_load(&s->busy) >= MAX_QUEUED) {
            char t[128];
            snprintf(t, sizeof t, "busy: %d generation requests are queued or running; try again later", MAX_QUEUED);
            reply_error(ctl, id, id_len, m.request_id, -PI_ERR_RANGE, t);
            break;
        }
        atomic_fetch_add(&s->busy, 1);
        struct job j = {.id_len = id_len, .request_id = m.request_id, .seq = ++s->next_seq,
                        .n_predict = m.u.generate.n_predict, .seed = m.u.generate.seed, .temp = m.u.generate.temp,
                        .prompt = m.u.generate.prompt};
        memcpy(j.id, id, id_len);
        m.u.generate.prompt = NULL; /* the generation thread frees it */
        if (zmq_send(pair, &j, sizeof j, ZMQ_DONTWAIT) != (int)sizeof j) {
            free(j.prompt);
            atomic_fetch_sub(&s->busy, 1);
            reply_error(ctl, id, id_len, m.request_id, -PI_ERR_IO, "internal error: generation thread unreachable");
        }
        break;
    }
    default:
        pi_ctl_peer_warn("control: unexpected %s request: rejected", pi_ctl_type_name(m.type));
        reply_error(ctl, id, id_len, m.request_id, -PI_ERR_UNSUPPORTED, "unexpected message type");
        break;
    }
    pi_ctl_msg_clear(&m);
    return quit;
}

/* An event from the generation thread: forward chunks and ends to their client, without waiting. A
 * chunk that cannot be queued stops its job (abort_seq) and the job's later chunks are not sent; its
 * end is still tried. */
static void on_event(struct server *s, void *ctl, const struct event *ev)
{
    if (ev->kind == EV_CHUNK && ev->seq == s->dropped_seq) return;
    struct pi_ctl_msg m = {.request_id = ev->request_id};
    char text[sizeof ev->text + 1];
    memcpy(text, ev->text, ev->len);
    text[ev->len] = '\0';
    if (ev->kind == EV_CHUNK) {
        m.type = PI_CTL_CHUNK;
        m.u.chunk.text = text;
    } else {
        m.type = PI_CTL_END;
        m.u.end.status = ev->status;
        m.u.end.n_prompt = ev->n_prompt;
        m.u.end.n_generated = ev->n_generated;
        m.u.end.reason = text;
    }
    if (pi_ctl_send(ctl, ev->id, ev->id_len, &m) == 0) return;
    if (ev->kind == EV_CHUNK) {
        pi_warn("control: request %llu: its client does not take replies (%s); stopping it",
                (unsigned long long)ev->request_id, zmq_strerror(zmq_errno()));
        s->dropped_seq = ev->seq;
        atomic_store(&s->abort_seq, ev->seq);
    } else {
        pi_warn("control: request %llu: its end could not be sent (%s)", (unsigned long long)ev->request_id,
                zmq_strerror(zmq_errno()));
    }
}

/* The control endpoint: [control] endpoint, or ipc://RUN_DIR/control.sock. The control socket has no
 * authentication, so it is a unix socket (in a run directory private to the user) or TCP on the
 * loopback interface only; anything else is refused before the model is loaded. */
static int control_endpoint(const struct pi_config *c, char *out, size_t len)
{
    int rc = pi_coord_run_dir_check(c->run_dir);
    if (rc != 0) return rc;
    const char *e = c->control_endpoint;
    if (e && *e) {
        static const char *const ok[] = {"ipc://", "tcp://127.0.0.1:", "tcp://localhost:", "tcp://[::1]:"};
        bool allowed = false;
        for (size_t i = 0; i < PI_ARRAY_LEN(ok); i++) allowed |= strncmp(e, ok[i], strlen(ok[i])) == 0 && e[strlen(ok[i])];
        if (!allowed) {
            pi_error("[control] endpoint %s: only ipc://PATH or tcp:// on the loopback interface (127.0.0.1, localhost, "
                     "[::1]) with a port: the control socket has no authentication", e);
            return -PI_ERR_INVAL;
        }
        int w = snprintf(out, len, "%s", e);
        if (w <= 0 || (size_t)w >= len) {
            pi_error("[control] endpoint %s: too long", e);
            return -PI_ERR_RANGE;
        }
        return 0;
    }
    return pi_ctl_endpoint(c->run_dir, "control", out, len);
}

/* True when a process accepts connections on the ipc:// endpoint ep: ZeroMQ's bind would silently
 * replace its socket file, leaving that coordinator unreachable. */
static bool endpoint_in_use(const char *ep)
{
    if (strncmp(ep, "ipc://", 6) != 0 || strlen(ep + 6) >= sizeof(((struct sockaddr_un *)0)->sun_path)) return false;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, ep + 6, strlen(ep + 6) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool used = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return used;
}

/* Remember which file the ipc:// bind made (after every bind: a rebind makes a new one). */
static void note_socket_file(struct server *s)
{
    if (strncmp(s->endpoint, "ipc://", 6) != 0 || lstat(s->endpoint + 6, &s->sock_st) != 0 || !S_ISSOCK(s->sock_st.st_mode))
        memset(&s->sock_st, 0, sizeof s->sock_st);
}

/* Raise the soft limit of open files to the hard one: what a flood must exhaust before the cap matters. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max;
    if (rl.rlim_cur >= want) return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) pi_warn("setrlimit(RLIMIT_NOFILE, %llu) failed: %s", (unsigned long long)want, strerror(errno));
    else pi_info("open files: soft limit raised from %llu to %llu", (unsigned long long)was, (unsigned long long)want);
}

/* Descriptors this process has open now (/proc/self/fd), or -1. */
static int fds_open(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* The connection cap: [control] max_connections, or half the descriptors still free. At least 1. */
static int connection_cap(const struct pi_config *c)
{
    struct rlimit rl;
    int64_t cap = c->max_connections, used = fds_open();
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && used >= 0) {
        int64_t free_fds = (int64_t)rl.rlim_cur - used;
        if (free_fds / 2 < cap) {
            cap = free_fds / 2;
            pi_warn("control: at most %lld connections at once: the limit of open files is %llu (%lld in use); "
                    "raise the hard limit for the [control] max_connections of %lld",
                    (long long)PI_MAX(cap, 1), (unsigned long long)rl.rlim_cur, (long long)used, (long long)c->max_connections);
        }
    }
    return (int)PI_MAX(cap, 1);
}

/* Start counting the control socket's connections (before it is bound). Returns 0 or -PI_ERR_IO. */
static int guard_start(struct server *s, void *ctl)
{
    int hs = HANDSHAKE_MS;
    if (zmq_setsockopt(ctl, ZMQ_HANDSHAKE_IVL, &hs, sizeof hs) != 0 ||
        zmq_socket_monitor(ctl, MON_EP, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
        pi_error("zmq_socket_monitor(control) failed: %s", zmq_strerror(zmq_errno()));
        return -PI_ERR_IO;
    }
    s->mon = zmq_socket(s->zctx, ZMQ_PAIR);
    if (!s->mon || zmq_connect(s->mon, MON_EP) != 0) {
        pi_error("control monitor: %s", zmq_strerror(zmq_errno()));
        return -PI_ERR_IO;
    }
    return 0;
}

/* Read the monitor's pending events (each: u16 event + u32 value, then the endpoint frame), count
 * the connections, and pause the listener at the cap. */
static void guard_on_events(struct server *s, void *ctl)
{
    for (int k = 0; k < EVENT_BURST; k++) {
        uint8_t ev[6];
        int n = zmq_recv(s->mon, ev, sizeof ev, ZMQ_DONTWAIT);
        if (n < 0) return;
        int more = 0;
        size_t sz = sizeof more;
        while (zmq_getsockopt(s->mon, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
            char skip[8];
            if (zmq_recv(s->mon, skip, sizeof skip, 0) < 0) break;
        }
        if (n != (int)sizeof ev || s->paused) continue; /* while paused the old connections are gone anyway */
        uint16_t what;
        memcpy(&what, ev, 2);
        if (what == ZMQ_EVENT_ACCEPTED) s->conns++;
        else if (what == ZMQ_EVENT_DISCONNECTED && s->conns > 0) s->conns--;
        if (s->conns < s->conn_cap) continue;
        s->pauses++;
        pi_warn("control: %d connections open, the cap: not listening for %d ms, the connections made so far are "
                "dropped (pause %llu)", s->conns, PAUSE_MS, (unsigned long long)s->pauses);
        if (zmq_unbind(ctl, s->bound_ep) != 0) pi_warn("zmq_unbind(%s) failed: %s", s->bound_ep, zmq_strerror(zmq_errno()));
        s->paused = true;
        s->resume_ns = pi_clock_ns() + (int64_t)PAUSE_MS * 1000000;
    }
}

/* Listen again once the pause is over (again PAUSE_MS later if the bind fails). */
static void guard_resume(struct server *s, void *ctl)
{
    if (!s->paused || pi_clock_ns() < s->resume_ns) return;
    s->conns = 0;
    if (zmq_bind(ctl, s->bound_ep) != 0) {
        pi_warn("control: listening again on %s failed: %s; retrying in %d ms", s->bound_ep, zmq_strerror(zmq_errno()), PAUSE_MS);
        s->resume_ns = pi_clock_ns() + (int64_t)PAUSE_MS * 1000000;
        return;
    }
    s->paused = false;
    note_socket_file(s);
    pi_info("control: listening again on %s (connections dropped at the cap: %llu times)", s->endpoint, (unsigned long long)s->pauses);
}

/* libzmq's ipc:// bind unlinks whatever is at the path first; so before binding, anything there that
 * is not a socket (a file of the user's, something planted) is a reason to refuse, never to delete. */
static bool path_replaceable(const char *ep)
{
    struct stat st;
    if (strncmp(ep, "ipc://", 6) != 0 || lstat(ep + 6, &st) != 0 || S_ISSOCK(st.st_mode)) return true;
    fprintf(stderr, "pi-coordinator: %s exists and is not a socket: refusing to replace it\n", ep + 6);
    pi_error("control endpoint %s: the path exists and is not a socket", ep);
    return false;
}

/* Serve until a signal or a SHUTDOWN. */
static void serve(struct server *s, void *ctl, void *pair, int sfd)
{
    for (;;) {
        zmq_pollitem_t it[4] = {{ctl, 0, ZMQ_POLLIN, 0}, {pair, 0, ZMQ_POLLIN, 0}, {NULL, sfd, ZMQ_POLLIN, 0},
                                {s->mon, 0, ZMQ_POLLIN, 0}};
        long wait_ms = 1000;
        if (s->paused) wait_ms = PI_MAX(0, PI_MIN(wait_ms, (long)((s->resume_ns - pi_clock_ns()) / 1000000) + 1));
        int n = zmq_poll(it, 4, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            pi_error("zmq_poll failed: %s", zmq_strerror(errno));
            return;
        }
        if (it[2].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) pi_info("signal %u: shutting down", si.ssi_signo);
            return;
        }
        for (int k = 0; (it[1].revents & ZMQ_POLLIN) && k < EVENT_BURST; k++) {
            struct event ev;
            if (zmq_recv(pair, &ev, sizeof ev, ZMQ_DONTWAIT) != (int)sizeof ev) break;
            on_event(s, ctl, &ev);
        }
        if (it[3].revents & ZMQ_POLLIN) guard_on_events(s, ctl);
        guard_resume(s, ctl);
        if ((it[0].revents & ZMQ_POLLIN) && on_control(s, ctl, pair)) return;
    }
}

int pi_coord_run_server(const struct pi_coord_opts *o, const char *argv0)
{
    (void)argv0;
    struct pi_coord_model cm;
    char ep[512];
    if (control_endpoint(&o->cfg, ep, sizeof ep) != 0) return PI_EXIT_USAGE; /* before loading the model */
    if (pi_coord_model_open(o, o->cfg.gpu_backend == PI_GPU_NONE, &cm) != 0) return PI_EXIT_USAGE;
    struct server s = {.o = o, .cm = &cm, .t_start = pi_clock_ns(), .engine_mu = PTHREAD_MUTEX_INITIALIZER};
    memcpy(s.endpoint, ep, sizeof ep);
    int status = PI_EXIT_FAILURE, sfd = -1;
    void *ctl = NULL, *pair = NULL;
    raise_nofile();
    pthread_t gen;
    bool gen_started = false, bound = false;
    /* Block the stop signals in every thread; the main thread reads them from a signalfd. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC);
    s.zctx = zmq_ctx_new();
    if (sfd < 0 || !s.zctx) goto out;
    ctl = pi_ctl_socket(s.zctx, ZMQ_ROUTER, 1000);
    pair = zmq_socket(s.zctx, ZMQ_PAIR);
    s.gen_sock = zmq_socket(s.zctx, ZMQ_PAIR);
    int nowait = 0, gen_to = GEN_SEND_MS;
    if (!ctl || !pair || !s.gen_sock || zmq_setsockopt(ctl, ZMQ_SNDTIMEO, &nowait, sizeof nowait) != 0 ||
        zmq_setsockopt(s.gen_sock, ZMQ_SNDTIMEO, &gen_to, sizeof gen_to) != 0 || zmq_bind(pair, GEN_EP) != 0 ||
        zmq_connect(s.gen_sock, GEN_EP) != 0)
        goto out;
    if (!path_replaceable(s.endpoint)) goto out;
    if (endpoint_in_use(s.endpoint)) {
        fprintf(stderr, "pi-coordinator: another coordinator is serving on %s\n", s.endpoint);
        goto out;
    }
    if (guard_start(&s, ctl) != 0) goto out;
    if (pi_ctl_bind(ctl, s.endpoint) != 0) {
        fprintf(stderr, "pi-coordinator: cannot serve on %s (another coordinator there?)\n", s.endpoint);
        goto out;
    }
    bound = true;
    note_socket_file(&s);
    size_t bl = sizeof s.bound_ep;
    if (zmq_getsockopt(ctl, ZMQ_LAST_ENDPOINT, s.bound_ep, &bl) != 0 || !s.bound_ep[0])
        memcpy(s.bound_ep, s.endpoint, sizeof s.bound_ep);
    if (pthread_create(&gen, NULL, gen_main, &s) != 0) goto out;
    gen_started = true;
    struct event ev;
    if (zmq_recv(pair, &ev, sizeof ev, 0) != (int)sizeof ev || ev.kind != EV_READY) {
        pi_error("the engine could not be started");
        goto out;
    }
    s.conn_cap = connection_cap(&o->cfg); /* with the engine's descriptors (workers, segments) open */
    pi_info("control: at most %d connections at once", s.conn_cap);
    printf("pi-coordinator: serving %s on %s\n", o->cfg.model_path, s.endpoint);
    fflush(stdout);
    pi_info("control socket: %s", s.endpoint);
    serve(&s, ctl, pair, sfd);
    status = PI_EXIT_OK;
    /* The engine is alive until the generation thread reads the quit job sent below, so it can be
     * cancelled here: a step the GPU worker does not answer (a hung device) would otherwise hold the
     * shutdown for the step channel's whole timeout. */
    atomic_store(&s.cancel, 1);
    pthread_mutex_lock(&s.engine_mu);
    pi_engine_pipeline_cancel(s.engine);
    pthread_mutex_unlock(&s.engine_mu);
out:
    if (gen_started) {
        /* Cancel a generation in flight, and still deliver its END (and any queued request's) to the
         * client, until the generation thread has stopped the workers and said goodbye. */
        atomic_store(&s.cancel, 1);
        struct job q = {.quit = 1};
        zmq_send(pair, &q, sizeof q, 0);
        int to = 100;
        zmq_setsockopt(pair, ZMQ_RCVTIMEO, &to, sizeof to);
        for (int64_t until = pi_clock_ns() + INT64_C(10000000000); pi_clock_ns() < until;) {
            struct event e;
            if (zmq_recv(pair, &e, sizeof e, 0) != (int)sizeof e) continue;
            if (e.kind == EV_EXIT) break;
            if (ctl && (e.kind == EV_CHUNK || e.kind == EV_END)) on_event(&s, ctl, &e);
        }
        pthread_join(gen, NULL);
    }
    int linger = 0;
    if (pair) zmq_setsockopt(pair, ZMQ_LINGER, &linger, sizeof linger);
    if (s.gen_sock) zmq_setsockopt(s.gen_sock, ZMQ_LINGER, &linger, sizeof linger);
    if (pair) zmq_close(pair);
    if (s.gen_sock) zmq_close(s.gen_sock);
    if (ctl && s.mon) zmq_socket_monitor(ctl, NULL, 0);
    if (s.mon) zmq_setsockopt(s.mon, ZMQ_LINGER, &linger, sizeof linger), zmq_close(s.mon);
    pi_ctl_close(&ctl);
    if (s.zctx) zmq_ctx_term(s.zctx);
    if (bound && s.sock_st.st_ino) { /* only our own socket: the same file, still a socket */
        struct stat now;
        if (lstat(s.endpoint + 6, &now) == 0 && S_ISSOCK(now.st_mode) && now.st_ino == s.sock_st.st_ino &&
            now.st_dev == s.sock_st.st_dev)
            unlink(s.endpoint + 6);
    }
    if (sfd >= 0) close(sfd);
    pi_coord_model_close(&cm);
    return status;
}
