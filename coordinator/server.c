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
 * Any malformed message on the control socket is logged (naming the defect) and answered with an
 * ERROR; one whose header is bad also closes its connection.
 *
 * The control socket is a plain unix (or TCP) socket that the main thread accepts, reads and writes
 * itself, polling it with the PAIR and the signalfd; the protocol's messages go back to back on each
 * connection (ipc/control-stream.h says why: over ZeroMQ's framing one peer could make libzmq hold a
 * multipart message of any size, and libzmq's own accept() aborts the process on EMFILE). The main
 * thread keeps a table of connections (struct conn), each framing its own bytes: at most one message
 * of PI_CTL_MAX_MSG per connection; a message over SMALL_MSG only while all the unfinished ones hold
 * less than FRAME_BUDGET (so peers that stop short of the end of large messages cannot keep small
 * requests out); a connection whose header is bad is closed (a byte stream cannot be resynchronised).
 * Replies are queued per connection and written as the socket takes them: a connection with
 * OUT_PAUSE unsent is not read (its requests wait), and one with OUT_MAX unsent does not take its
 * replies (its generation is stopped). Who may connect: over ipc the socket file is mode 0600 in a
 * directory of ours and the peer's uid (SO_PEERCRED) must be ours; over tcp the first message must be
 * AUTH with the token of [control] token_file.
 *
 * Descriptors: the soft limit is raised to the hard one at start. Once the engine runs, the
 * descriptors still free are split between this socket's cap and the HTTP API's, after a reserve for
 * the rest of the process (fd_budget_apply; coordinator/fd-budget.h: libzmq aborts on EMFILE when a
 * worker reconnects). Past the cap ([control] max_connections, or its share of the budget) a new
 * connection is accepted and closed at once, so the clients already connected keep theirs and the
 * descriptors in use never pass the cap by more than one. Should accept() still fail for want of descriptors (others
 * of the process's), the listener rests ACCEPT_REST_MS, new connections waiting in the kernel's
 * backlog meanwhile (nginx's answer to EMFILE). A connection that sends no complete message for
 * IDLE_MS after it opened (or leaves one unfinished that long) is closed, so idle sockets cannot fill
 * the cap slowly. Over tcp a connection must send its token within AUTH_MS, and those yet to send it
 * have their own cap (conn_make_room closes the oldest of them), so they cannot lock out the token's
 * holders.
 *
 * Replies back up (OUT_PAUSE unsent): the connection's input is no longer framed, even within one
 * read (the rest of it is kept in conn.in), so its requests cannot queue more than OUT_PAUSE plus one
 * reply; a reply that cannot be queued closes the connection with an ERROR, never silently. A
 * connection that closes (or is refused) stops its generation requests: job_gone[slot].
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/fd-budget.h"
#include "coordinator/generate.h"
#include "coordinator/http.h"
#include "coordinator/sched.h"
#include "coordinator/sdnotify.h"
#include "coordinator/pipeline.h"
#include "coordinator/supervisor.h"
#include "ipc/control.h"
#include "ipc/control-stream.h"
#include "ipc/futex.h"
#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <limits.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define GEN_EP "inproc://pinfer-generate"
#define MAX_QUEUED 64     /* generation requests accepted and not yet ended, at most */
#define JOB_SLOTS (2 * MAX_QUEUED) /* job slots: a slot is free once its END is handled, a little after busy drops */
#define EVENT_BURST 256   /* generation-thread events handled between two polls */
#define GEN_SEND_MS 5000  /* how long the generation thread waits to hand an event to the main thread */
#define IDLE_MS 10000     /* a connection must send its first message, and finish each one, within this */
#define CLOSE_MS 1000     /* a refused connection is closed once its ERROR is written, or this long after */
#define AUTH_MS 2000      /* tcp: a connection must have sent its token this long after it opened */
#define UNAUTH_MAX 16     /* tcp: connections without their token yet, at most (and a quarter of the cap) */
#define ACCEPT_REST_MS 100              /* how long the listener rests when accept() runs out of descriptors */
#define READ_BURST (256u << 10)         /* bytes read from one connection between two polls */
#define OUT_MAX (2u << 20)              /* replies queued for one connection: past it, it does not take them */
#define OUT_PAUSE 65536                 /* a connection with this much unsent is not read: its requests wait */
#define CLOSE_SLACK 65536               /* a refused connection that sends this much more is closed at once */
#define FRAME_BUDGET ((size_t)64 << 20) /* unfinished messages, all connections: past it large ones are refused */
#define SMALL_MSG 65536 /* a message up to this size is taken even past FRAME_BUDGET: requests stay served */
#define AUTH_MSG (PI_CTL_HEADER_SIZE + 4 + PI_CTL_TOKEN_MAX) /* the largest message before the token */

/* A control-socket generation request as the scheduler's sink sees it (malloc'd by the main thread,
 * freed by the sink's end on the generation thread). */
struct cjob {
    struct server *s;
    uint64_t conn;             /* the client's connection (struct conn's serial) */
    uint64_t request_id;
    uint64_t seq;              /* the server's number of this job (abort_seq) */
    int slot;                  /* its slot: job_gone[slot] set when its client went away */
    struct event *ev;          /* the chunk being filled */
};

/* generation thread -> main */
enum { EV_READY = 1, EV_CHUNK = 2, EV_END = 3, EV_FAILED = 4, EV_EXIT = 5 };
struct event {
    int kind;
    uint64_t conn; /* the job's */
    uint64_t request_id;
    uint64_t seq;              /* the job's */
    int slot;                  /* the job's */
    int32_t status;
    uint32_t n_prompt, n_generated;
    char text[512];            /* chunk text (len bytes) or the end's reason */
    size_t len;
};

/* One connection of the control socket (main thread only). */
enum conn_state { CONN_OPEN = 1, CONN_CLOSING = 2 };
struct conn {
    int fd;
    uint64_t serial; /* its name in jobs and events: never reused, so a late event finds no one */
    enum conn_state state;
    bool authed;             /* may send requests: ipc (the uid was checked), tcp after its token */
    bool dead;               /* the peer closed, or a write failed: closed at the next sweep */
    bool shut;               /* CLOSING: its ERROR is written and our side shut down */
    size_t ignored;          /* CLOSING: bytes read and dropped since */
    int64_t deadline_ns;     /* 0: none; OPEN: its first message, or the one begun, is due; CLOSING: close then */
    struct pi_ctl_framer fr; /* the message being received */
    uint8_t *in;             /* bytes read and not yet framed while its replies back up: in[in_off..in_len),
                                at most one read (sizeof conn_read's buffer); NULL when none */
    size_t in_off, in_len;
    uint8_t *out;            /* replies not yet written: out[out_off..out_len), at most OUT_MAX */
    size_t out_off, out_len, out_cap;
};

struct server {
    const struct pi_coord_opts *o;
    const struct pi_coord_model *cm;
    void *zctx;
    void *gen_sock;            /* generation thread's end of the PAIR */
    pi_sched_t *sched;         /* continuous batching over the engine (coordinator/sched.h); its run
                                  loop is the generation thread's */
    pi_http_t *http;           /* the HTTP API (coordinator/http.h); NULL when [http] listen = off */
    pi_engine_t *engine;       /* owned by the generation thread; read-only for status */
    pthread_mutex_t engine_mu; /* held by the generation thread to destroy the engine, by the main
                                  thread while it reads it (status, the shutdown's cancel) */
    int64_t t_start;
    _Atomic int busy;          /* generation requests accepted and not yet ended */
    _Atomic int cancel;        /* shutdown asked while generating */
    _Atomic uint64_t abort_seq; /* the job whose client stopped taking replies: stop it (0: none) */
    uint64_t next_seq;         /* main thread: the last job's seq */
    uint64_t dropped_seq;      /* main thread: the job whose replies are no longer sent */
    /* Jobs whose client went away (closed, or refused) are not run, or stop at the generation's next
     * stop question: the main thread sets job_gone[slot]; the generation thread reads it. */
    _Atomic bool job_gone[JOB_SLOTS];
    uint64_t slot_conn[JOB_SLOTS]; /* main thread: the connection of the job in each slot (0: free) */
    uint64_t slot_seq[JOB_SLOTS];  /* main thread: that job's seq */
    _Atomic uint64_t requests, tokens;
    char endpoint[512];
    /* Connections (main thread only; see DESIGN). */
    struct pi_ctl_ep ep;              /* the control endpoint, parsed */
    char token[PI_CTL_TOKEN_MAX + 1]; /* tcp: the shared token; "" for ipc */
    int lfd;                          /* the listening socket */
    struct conn *conns;               /* [conn_cap] */
    zmq_pollitem_t *items;            /* [conn_cap + 3]: the poll set */
    int n_conns;
    int conn_cap; /* the most held at once */
    uint64_t next_serial;
    size_t held;          /* bytes of unfinished messages, all connections together
                                         (FRAME_BUDGET plus small ones, at most) */
    uint64_t refused;     /* connections closed at the cap */
    uint64_t rests;       /* times accept() ran out of descriptors */
    int64_t accept_at_ns; /* the listener rests until then */
    struct stat sock_st;  /* the ipc:// socket file we made (st_ino 0: none): the only
                                         thing unlinked at exit */
};

/* A warning repeated at most once a second (main thread only): a peer could otherwise have one
 * logged per request it sends. The ones held back are counted in the next. */
struct warn_limit {
    int64_t next_ns;
    uint64_t held;
};
static bool warn_pass(struct warn_limit *w, uint64_t *held_back)
{
    const int64_t now = pi_clock_ns();
    if (now < w->next_ns) {
        w->held++;
        return false;
    }
    *held_back = w->held;
    w->held = 0;
    w->next_ns = now + INT64_C(1000000000);
    return true;
}

static void send_event(struct server *s, const struct event *ev)
{
    if (zmq_send(s->gen_sock, ev, sizeof *ev, 0) < 0) pi_warn("generation thread: event not delivered");
}

/* The scheduler's question before each step: the shutdown, or this job's client gone. */
static int cjob_stopped(void *ctx)
{
    const struct cjob *j = ctx;
    return atomic_load(&j->s->cancel) || atomic_load(&j->s->abort_seq) == j->seq || atomic_load(&j->s->job_gone[j->slot]);
}

/* Stream text as CHUNK events of at most sizeof ev.text bytes. The protocol's strings hold no NUL
 * (ipc/control.h), so a NUL byte of the text (a byte-fallback token <0x00>) is sent as U+FFFD. */
static void cjob_text(struct cjob *j, const char *text, size_t len)
{
    static const char repl[3] = {'\xef', '\xbf', '\xbd'};
    struct event ev = {.kind = EV_CHUNK, .conn = j->conn, .request_id = j->request_id, .seq = j->seq, .slot = j->slot};
    for (size_t i = 0; i < len; i++) {
        const size_t need = text[i] ? 1 : sizeof repl;
        if (ev.len + need > sizeof ev.text) {
            send_event(j->s, &ev);
            ev.len = 0;
        }
        if (text[i]) ev.text[ev.len++] = text[i];
        else memcpy(ev.text + ev.len, repl, sizeof repl), ev.len += sizeof repl;
    }
    if (ev.len) send_event(j->s, &ev);
}

static void cjob_piece(void *ctx, const struct pi_sched_piece *p)
{
    struct cjob *j = ctx;
    if (p->len && !cjob_stopped(j)) cjob_text(j, p->text, p->len);
}

/* The job's end as an END event (the reason a client is shown), then its bookkeeping. */
static void cjob_end(void *ctx, const struct pi_sched_end *e)
{
    struct cjob *j = ctx;
    struct server *s = j->s;
    if (e->len && !cjob_stopped(j)) cjob_text(j, e->text, e->len);
    struct event ev = {.kind = EV_END,
                       .conn = j->conn,
                       .request_id = j->request_id,
                       .seq = j->seq,
                       .slot = j->slot,
                       .n_prompt = (uint32_t)e->n_prompt,
                       .n_generated = (uint32_t)e->n_generated};
    int rc = 0;
    if (e->finish == PI_SCHED_CANCELLED) {
        rc = atomic_load(&s->cancel) ? -PI_ERR_PEER : -PI_ERR_IO;
        if (atomic_load(&s->cancel)) snprintf(ev.text, sizeof ev.text, "cancelled: the coordinator is shutting down");
        else if (atomic_load(&s->job_gone[j->slot])) snprintf(ev.text, sizeof ev.text, "stopped: its client went away");
        else if (atomic_load(&s->abort_seq) == j->seq)
            snprintf(ev.text, sizeof ev.text, "stopped: the client did not take its replies (stopped reading or went away)");
        else snprintf(ev.text, sizeof ev.text, "%s", e->reason);
    } else if (e->finish == PI_SCHED_TIMEOUT) {
        rc = -PI_ERR_TIMEOUT;
        snprintf(ev.text, sizeof ev.text, "%s ([server] timeout)", e->reason);
    } else if (e->finish == PI_SCHED_ERROR) {
        rc = e->status ? e->status : -PI_ERR_IO;
        snprintf(ev.text, sizeof ev.text, "%s", e->reason);
    }
    ev.status = rc;
    ev.len = strlen(ev.text);
    atomic_fetch_add(&s->tokens, (uint64_t)e->n_generated);
    if (rc == 0) atomic_fetch_add(&s->requests, 1);
    send_event(s, &ev);
    atomic_fetch_sub(&s->busy, 1);
    free(j);
}

static void *gen_main(void *arg)
{
    struct server *s = arg;
    s->engine = pi_coord_engine_new(s->o, s->cm, NULL);
    if (s->engine) pi_sched_set_engine(s->sched, s->engine);
    struct event ev = {.kind = s->engine ? EV_READY : EV_FAILED};
    send_event(s, &ev);
    if (s->engine) pi_sched_run(s->sched); /* until pi_sched_stop: every job has ended then */
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
    return st == PI_WORKER_READY      ? "ready"
           : st == PI_WORKER_STARTING ? "starting"
           : st == PI_WORKER_BROKEN   ? "broken" /* alive, its pipeline lost a worker: restarted at once */
                                      : "dead";
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

/* The scheduler for status: slots, the queue, outcomes, throughput and latencies since the start. */
static json_t *sched_json(struct server *s)
{
    struct pi_sched_stats st;
    pi_sched_stats(s->sched, &st);
    json_t *outcomes = json_object();
    uint64_t ended = 0, with_ttft = 0, with_tpot = 0;
    for (int i = 0; outcomes && i < PI_SCHED_FINISH_COUNT; i++) {
        json_object_set_new(outcomes, pi_sched_finish_name((enum pi_sched_finish)i), json_integer((json_int_t)st.requests[i]));
        ended += st.requests[i];
    }
    for (int i = 0; i < PI_SCHED_TTFT_BUCKETS; i++) with_ttft += st.ttft[i];
    for (int i = 0; i < PI_SCHED_TPOT_BUCKETS; i++) with_tpot += st.tpot[i];
    const double up_s = (double)(pi_clock_ns() - s->t_start) * 1e-9;
    return json_pack("{s:b, s:i, s:i, s:i, s:i, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:s, s:s}", "ready", st.ready,
                     "slots", st.n_slots, "running", st.running, "waiting", st.waiting, "queue_max", st.queue_max,
                     "requests_ended", (json_int_t)ended, "outcomes", outcomes ? outcomes : json_null(), "refused",
                     (json_int_t)st.refused, "prompt_tokens", (json_int_t)st.prompt_tokens, "cached_tokens",
                     (json_int_t)st.cached_tokens, "generated_tokens", (json_int_t)st.generated_tokens, "engine_errors",
                     (json_int_t)st.engine_errors, "restarts", (json_int_t)st.restarts, "generated_tokens_per_s", up_s > 0 ? (double)st.generated_tokens / up_s : 0.0,
                     "mean_ttft_s", with_ttft ? st.ttft_sum / (double)with_ttft : 0.0, "mean_tpot_s",
                     with_tpot ? st.tpot_sum / (double)with_tpot : 0.0, "kv_cache_usage",
                     st.kv_total > 0 ? (double)st.kv_used / (double)st.kv_total : 0.0, "last_error", st.last_error, "http",
                     pi_http_url(s->http));
}

/* status's overall health (pi_sched_health's words): the scheduler's, except that a worker seen dead or
 * its pipeline broken while the scheduler still says ok (it notices within one idle wait) is
 * "restarting" already. */
static const char *health_of(struct server *s)
{
    struct pi_sched_stats st;
    pi_sched_stats(s->sched, &st);
    const char *h = pi_sched_health(&st);
    if (strcmp(h, "ok") != 0) return h;
    struct pi_worker_info *w = calloc(PI_SUPER_MAX_WORKERS, sizeof *w);
    size_t n = w ? PI_MIN(pi_engine_pipeline_workers(s->engine, w, PI_SUPER_MAX_WORKERS), (size_t)PI_SUPER_MAX_WORKERS) : 0;
    for (size_t i = 0; i < n; i++)
        if (w[i].state == PI_WORKER_DEAD || w[i].state == PI_WORKER_BROKEN) h = "restarting";
    free(w);
    return h;
}

static json_t *status_json(struct server *s)
{
    const struct pi_hparams *hp = &s->cm->model->hp;
    static const char *const backends[] = {"none", "host", "cuda"};
    struct stat mst;
    const json_int_t file_bytes = stat(s->o->cfg.model_path, &mst) == 0 ? (json_int_t)mst.st_size : 0;
    json_t *model = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:s, s:I}", "path", s->o->cfg.model_path, "arch", hp->arch,
                              "layers", hp->n_layer, "n_embd", hp->n_embd, "n_ff", hp->n_ff, "n_vocab", hp->n_vocab,
                              "activation", pi_ffn_act_name(hp->act), "file_bytes", file_bytes);
    const struct pi_placement *pl = pi_engine_pipeline_placement(s->engine);
    const int64_t hot = pl ? pi_placement_hot_max(pl) : -1;
    return json_pack("{s:s, s:o, s:I, s:I, s:I, s:i, s:s, s:I, s:i, s:o, s:s, s:i, s:o, s:o, s:o, s:o}", "health", health_of(s), "model", model, "uptime_ms",
                     (json_int_t)((pi_clock_ns() - s->t_start) / 1000000), "requests_served",
                     (json_int_t)atomic_load(&s->requests), "tokens_generated", (json_int_t)atomic_load(&s->tokens),
                     "pid", (int)getpid(), "gpu_backend", backends[s->o->cfg.gpu_backend], "hot_neurons_per_layer",
                     (json_int_t)hot, "cpu_workers", pl ? pl->n_workers : 0, "placement", placement_json(pl, s->cm->model),
                     "control", s->endpoint, "generations_in_flight", atomic_load(&s->busy), "workers", workers_json(s), "tune",
                     tune_json(&s->o->cfg), "sparsity", sparsity_json(s), "scheduler", sched_json(s));
}

static int conn_send(struct server *s, uint64_t serial, const struct pi_ctl_msg *m, bool force);
static struct conn *conn_find(struct server *s, uint64_t serial);
static void conn_refuse(struct server *s, struct conn *c, uint64_t req, int code, const char *text);
static void reply(struct server *s, struct conn *c, struct pi_ctl_msg *m);
static void reply_error(struct server *s, struct conn *c, uint64_t req, int code, const char *text);

/* A control request's prompt as token ids (BOS as the model says; special tokens not parsed), checked
 * against the context with n_predict tokens after it (the last one is never evaluated). 0, or a
 * negative pi_err with the client's reason in why. */
static int control_prompt(struct server *s, const char *prompt, uint32_t n_predict, int32_t **ids, size_t *n, char *why,
                          size_t len)
{
    const pi_tokenizer_t *t = s->cm->tok;
    *ids = NULL;
    *n = 0;
    if (!t) return snprintf(why, len, "the model has no tokenizer"), -PI_ERR_INVAL;
    const size_t plen = prompt ? strlen(prompt) : 0;
    int rc = pi_tokenize_alloc(t, prompt ? prompt : "", plen, true, false, ids, n);
    if (rc != 0) return snprintf(why, len, "tokenizing the prompt failed: %s", pi_err_str(rc)), rc;
    if (*n == 0) return snprintf(why, len, "the prompt is empty"), -PI_ERR_INVAL;
    const int64_t n_ctx = pi_sched_n_ctx(s->sched);
    if ((int64_t)*n > n_ctx || (int64_t)*n + n_predict > n_ctx + 1)
        return snprintf(why, len, "the prompt (%zu tokens) and the %u tokens to generate do not fit the context of %lld positions",
                        *n, n_predict, (long long)n_ctx),
               -PI_ERR_RANGE;
    return 0;
}

/* One request from an authenticated connection. Returns 1 when the server should shut down. */
static int handle_msg(struct server *s, void *pair, struct conn *c, struct pi_ctl_msg *m)
{
    (void)pair; /* jobs go to the scheduler (pi_sched_submit) */
    int quit = 0;
    struct pi_ctl_msg r = {.request_id = m->request_id};
    switch (m->type) {
    case PI_CTL_STATUS_REQ:
        r.type = PI_CTL_STATUS_RESP;
        pthread_mutex_lock(&s->engine_mu);
        r.u.json = status_json(s);
        pthread_mutex_unlock(&s->engine_mu);
        if (r.u.json) reply(s, c, &r);
        else reply_error(s, c, m->request_id, -PI_ERR_NOMEM, "status: out of memory");
        json_decref(r.u.json);
        break;
    case PI_CTL_SHUTDOWN:
        r.type = PI_CTL_SHUTDOWN;
        reply(s, c, &r);
        pi_info("shutdown requested over the control socket");
        quit = 1;
        break;
    case PI_CTL_GENERATE: {
        if (atomic_load(&s->busy) >= MAX_QUEUED) {
            char t[128];
            snprintf(t, sizeof t, "busy: %d generation requests are queued or running; try again later", MAX_QUEUED);
            reply_error(s, c, m->request_id, -PI_ERR_RANGE, t);
            break;
        }
        int slot = 0;
        while (slot < JOB_SLOTS && s->slot_conn[slot]) slot++;
        if (slot == JOB_SLOTS) { /* busy just dropped and the ENDs are not yet handled: as busy */
            reply_error(s, c, m->request_id, -PI_ERR_RANGE, "busy: generation requests are ending; try again");
            break;
        }
        pi_gen_ctl_defaults(&s->o->cfg, &m->u.generate); /* what the client left to [generate] */
        struct pi_sched_job sj = {.n_predict = m->u.generate.n_predict, .top_logprobs = -1,
                                  .sink = {cjob_piece, cjob_end, cjob_stopped}};
        pi_gen_params_from_config(&s->o->cfg, &sj.sample);
        sj.sample.temperature = m->u.generate.temp;
        sj.sample.seed = m->u.generate.seed;
        int32_t *ids = NULL;
        size_t n = 0;
        char why[160];
        int rc = control_prompt(s, m->u.generate.prompt, m->u.generate.n_predict, &ids, &n, why, sizeof why);
        struct cjob *j = rc == 0 ? calloc(1, sizeof *j) : NULL;
        if (rc == 0 && !j) rc = -PI_ERR_NOMEM, snprintf(why, sizeof why, "out of memory");
        if (rc != 0) {
            free(ids);
            reply_error(s, c, m->request_id, rc, why);
            break;
        }
        *j = (struct cjob){.s = s, .conn = c->serial, .request_id = m->request_id, .seq = ++s->next_seq, .slot = slot};
        sj.tokens = ids;
        sj.n_tokens = n;
        sj.ctx = j;
        s->slot_conn[slot] = c->serial;
        s->slot_seq[slot] = j->seq;
        atomic_store(&s->job_gone[slot], false);
        atomic_fetch_add(&s->busy, 1);
        uint64_t id = 0;
        rc = pi_sched_submit(s->sched, &sj, &id);
        free(ids);
        if (rc != 0) {
            free(j);
            s->slot_conn[slot] = 0;
            atomic_fetch_sub(&s->busy, 1);
            reply_error(s, c, m->request_id, rc,
                        rc == -PI_ERR_RANGE ? "busy: the server's queue is full; try again later"
                        : rc == -PI_ERR_PEER ? "the coordinator is shutting down"
                                             : "the request was refused (bad sampling parameters?)");
        }
        break;
    }
    case PI_CTL_AUTH: break; /* a token sent again, or over ipc: nothing to do */
    default:
        pi_ctl_peer_warn("control: unexpected %s request: rejected", pi_ctl_type_name(m->type));
        reply_error(s, c, m->request_id, -PI_ERR_UNSUPPORTED, "unexpected message type");
        break;
    }
    pi_ctl_msg_clear(m);
    return quit;
}

/* An event from the generation thread: forward chunks and ends to their client, without waiting. A
 * chunk that cannot be queued stops its job (abort_seq) and the job's later chunks are not sent; its
 * end is still tried. */
static void on_event(struct server *s, const struct event *ev)
{
    const bool slot_ok = ev->slot >= 0 && ev->slot < JOB_SLOTS && s->slot_seq[ev->slot] == ev->seq;
    if (ev->kind == EV_END && slot_ok) s->slot_conn[ev->slot] = 0; /* the slot is free again */
    if (slot_ok && atomic_load(&s->job_gone[ev->slot])) return;   /* no one to tell */
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
    const int rc = conn_send(s, ev->conn, &m, false);
    if (rc == 0) return;
    static struct warn_limit wl;
    uint64_t held_back = 0;
    const bool say = warn_pass(&wl, &held_back);
    const char *why = rc == -PI_ERR_PEER      ? "it went away"
                      : rc == -PI_ERR_TIMEOUT ? "it stopped reading"
                                              : pi_err_str(rc);
    if (ev->kind == EV_CHUNK) {
        if (say)
            pi_warn("control: request %llu: its client does not take replies (%s); stopping it (%llu such warnings "
                    "held back)",
                    (unsigned long long)ev->request_id, why, (unsigned long long)held_back);
        s->dropped_seq = ev->seq;
        atomic_store(&s->abort_seq, ev->seq);
        return;
    }
    if (say)
        pi_warn("control: request %llu: its end could not be sent (%s)%s (%llu such warnings held back)",
                (unsigned long long)ev->request_id, why, rc == -PI_ERR_PEER ? "" : "; its connection is closed",
                (unsigned long long)held_back);
    /* Its client would wait for the END forever: say why and close. */
    struct conn *c = rc == -PI_ERR_PEER ? NULL : conn_find(s, ev->conn);
    if (c && c->state == CONN_OPEN)
        conn_refuse(s, c, ev->request_id, rc,
                    rc == -PI_ERR_TIMEOUT ? "replies not taken: 2 MiB queued unread; the request was stopped and "
                                            "the connection is closed"
                                          : "the request's end could not be queued; the connection is closed");
}

/* The control endpoint: [control] endpoint, or ipc://RUN_DIR/control.sock, parsed into *ep (abstract
 * unix sockets and other transports refused). tcp:// has no peer credentials, so it needs the shared
 * token of [control] token_file, read here into token; anything refused is refused before the model
 * is loaded. */
static int control_endpoint(const struct pi_config *c, char *out, size_t len, struct pi_ctl_ep *ep, char *token,
                            size_t token_len)
{
    int rc = pi_coord_run_dir_check(c->run_dir);
    if (rc != 0) return rc;
    const char *e = c->control_endpoint;
    char err[512];
    if (e && *e) {
        int w = snprintf(out, len, "%s", e);
        if (w <= 0 || (size_t)w >= len) {
            pi_error("[control] endpoint %s: too long", e);
            return -PI_ERR_RANGE;
        }
    } else if ((rc = pi_ctl_endpoint(c->run_dir, "control", out, len)) != 0) {
        return rc;
    }
    if (pi_ctl_ep_parse(out, ep, err, sizeof err) != 0) {
        pi_error("[control] endpoint %s", err);
        return -PI_ERR_INVAL;
    }
    token[0] = '\0';
    if (ep->transport != PI_CTL_TCP) return 0;
    if (!c->control_token_file || !*c->control_token_file) {
        pi_error("[control] endpoint %s: tcp:// needs a shared token ([control] token_file): without it the "
                 "control socket would have no authentication",
                 out);
        return -PI_ERR_INVAL;
    }
    if (pi_ctl_token_load(c->control_token_file, token, token_len, err, sizeof err) != 0) {
        pi_error("[control] %s", err);
        return -PI_ERR_INVAL;
    }
    if (!ep->loopback)
        pi_warn("control: listening on %s beyond the loopback interface: requests and the token cross the network "
                "unencrypted (doc/security.md)",
                out);
    return 0;
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

static struct conn *conn_find(struct server *s, uint64_t serial)
{
    for (int k = 0; k < s->n_conns; k++)
        if (s->conns[k].serial == serial) return &s->conns[k];
    return NULL;
}

/* True when c's requests must wait: OUT_PAUSE of its replies unsent. Checked before each message is
 * framed, so one read's many small requests cannot queue more than OUT_PAUSE plus one reply. */
static bool conn_paused(const struct conn *c)
{
    return c->state == CONN_OPEN && c->out_len - c->out_off >= OUT_PAUSE;
}

/* Connection serial went away (or was refused): its queued and running jobs are stopped. */
static void conn_jobs_stop(struct server *s, uint64_t serial)
{
    int n = 0;
    for (int k = 0; k < JOB_SLOTS; k++)
        if (s->slot_conn[k] == serial && !atomic_load(&s->job_gone[k])) atomic_store(&s->job_gone[k], true), n++;
    if (n) pi_info("control: %d generation requests stopped: their client went away", n);
}

/* Close connection c and forget it (its message, its unframed input and its unsent replies); its
 * generation requests are stopped. */
static void conn_drop(struct server *s, struct conn *c)
{
    conn_jobs_stop(s, c->serial);
    close(c->fd);
    s->held -= pi_ctl_framer_held(&c->fr);
    pi_ctl_framer_clear(&c->fr);
    free(c->in);
    free(c->out);
    *c = s->conns[--s->n_conns];
}

/* Write what c has queued; false when the connection is gone (the caller drops it). */
static bool conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
    c->out_off = c->out_len = 0;
    if (c->out_cap > OUT_PAUSE) { /* a burst's buffer is not kept by an idle connection */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    return true;
}

/* Queue msg for the connection named serial and write what the socket takes now. Returns 0,
 * -PI_ERR_PEER (no such connection: it went away), -PI_ERR_TIMEOUT (it does not take its replies:
 * OUT_MAX queued, unless force: the one ERROR that closes it), or the encoder's error. Never waits. */
static int conn_send(struct server *s, uint64_t serial, const struct pi_ctl_msg *m, bool force)
{
    struct conn *c = conn_find(s, serial);
    if (!c || c->dead) return -PI_ERR_PEER;
    uint8_t *buf;
    size_t len;
    int rc = pi_ctl_encode(m, &buf, &len);
    if (rc < 0) return rc;
    if (!force && c->out_len - c->out_off + len > OUT_MAX) {
        free(buf);
        return -PI_ERR_TIMEOUT;
    }
    if (c->out_off) { /* compact: the queue starts at 0 */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = PI_MAX(PI_MIN(c->out_cap * 2, (size_t)OUT_MAX), c->out_len + len); /* OUT_MAX + an ERROR at most */
        uint8_t *p = realloc(c->out, cap);
        if (!p) {
            free(buf);
            return -PI_ERR_NOMEM;
        }
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    free(buf);
    if (!conn_flush(c)) c->dead = true; /* dropped by the main loop; replies to it fail from now */
    return c->dead ? -PI_ERR_PEER : 0;
}

/* Answer ERROR, take no more from the connection, and close it once the ERROR is written (or
 * CLOSE_MS later). The ERROR is queued past OUT_MAX if need be: a connection is never closed without
 * saying why. */
static void conn_refuse(struct server *s, struct conn *c, uint64_t req, int code, const char *text)
{
    struct pi_ctl_msg m = {.type = PI_CTL_ERROR, .request_id = req};
    m.u.error.code = code;
    m.u.error.text = (char *)text;
    (void)conn_send(s, c->serial, &m, true); /* fails only when it is gone, or for want of memory */
    conn_jobs_stop(s, c->serial);
    s->held -= pi_ctl_framer_held(&c->fr);
    pi_ctl_framer_clear(&c->fr);
    c->state = CONN_CLOSING;
    c->deadline_ns = pi_clock_ns() + (int64_t)CLOSE_MS * 1000000;
}

/* Send a reply to a request of c. One that cannot be queued is never dropped silently: the connection
 * is closed with an ERROR saying so (its client would otherwise wait for it forever). */
static void reply(struct server *s, struct conn *c, struct pi_ctl_msg *m)
{
    static struct warn_limit wl;
    uint64_t held_back;
    const int rc = conn_send(s, c->serial, m, false);
    if (rc == 0 || rc == -PI_ERR_PEER) return; /* sent, or there is no one left to tell */
    if (warn_pass(&wl, &held_back))
        pi_warn("control: a reply (%s) could not be queued (%s): its connection is closed (%llu more held back)",
                pi_ctl_type_name(m->type), pi_err_str(rc), (unsigned long long)held_back);
    conn_refuse(s, c, m->request_id, rc,
                rc == -PI_ERR_TIMEOUT ? "replies not taken: 2 MiB queued unread; the connection is closed"
                                      : "a reply could not be queued; the connection is closed");
}

static void reply_error(struct server *s, struct conn *c, uint64_t req, int code, const char *text)
{
    struct pi_ctl_msg m = {.type = PI_CTL_ERROR, .request_id = req};
    m.u.error.code = code;
    m.u.error.text = (char *)text;
    reply(s, c, &m);
}

/* tcp: make room for a new connection among those that have not sent their token: at the cap of
 * connections, or at the cap of those (UNAUTH_MAX, a quarter of the cap), the oldest of them is closed.
 * So peers that connect and send nothing cannot lock out the token's holders: they hold at most
 * AUTH_MS each and never more than their own cap. Called only outside the loop over the poll set. */
static void conn_make_room(struct server *s)
{
    const int unauth_cap = PI_MAX(1, PI_MIN(UNAUTH_MAX, s->conn_cap / 4));
    int n_unauth = 0, oldest = -1;
    for (int k = 0; k < s->n_conns; k++) {
        if (s->conns[k].authed) continue;
        n_unauth++;
        if (oldest < 0 || s->conns[k].serial < s->conns[oldest].serial) oldest = k;
    }
    if (oldest < 0 || (s->n_conns < s->conn_cap && n_unauth < unauth_cap)) return;
    static struct warn_limit wl;
    uint64_t held_back;
    if (warn_pass(&wl, &held_back))
        pi_ctl_peer_warn("control: %d tcp connections without their token (%d open): the oldest closed for a new one "
                         "(%llu more held back)",
                         n_unauth, s->n_conns, (unsigned long long)held_back);
    conn_drop(s, &s->conns[oldest]);
}

/* Accept what the listener has, at most EVENT_BURST: over the cap a connection is closed at once (the
 * clients already connected keep theirs); over ipc its uid must be ours; over tcp it must send the
 * token first, within AUTH_MS, and those yet to send it make room for new ones (conn_make_room). When accept() runs out of descriptors the listener rests ACCEPT_REST_MS, the
 * connections made meanwhile waiting in the kernel's backlog (nginx's answer to EMFILE). */
static void on_listener(struct server *s)
{
    for (int k = 0; k < EVENT_BURST; k++) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                s->rests++;
                pi_warn("control: accept() failed: %s; not accepting for %d ms (%llu times so far)", strerror(errno),
                        ACCEPT_REST_MS, (unsigned long long)s->rests);
                s->accept_at_ns = pi_clock_ns() + (int64_t)ACCEPT_REST_MS * 1000000;
            }
            return; /* EAGAIN: none left; ECONNABORTED and the like: the next poll tries again */
        }
        if (s->ep.transport == PI_CTL_TCP) conn_make_room(s);
        if (s->n_conns >= s->conn_cap) {
            if (s->refused++ % 1000 == 0)
                pi_warn("control: %d connections open, the cap: closing new ones as they come (%llu so far)",
                        s->n_conns, (unsigned long long)s->refused);
            close(fd);
            continue;
        }
        struct conn *c = &s->conns[s->n_conns++];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->serial = ++s->next_serial;
        c->state = CONN_OPEN;
        c->authed = s->ep.transport == PI_CTL_IPC;
        c->deadline_ns = pi_clock_ns() + (int64_t)(c->authed ? IDLE_MS : AUTH_MS) * 1000000;
        c->fr.max = c->authed ? 0 : AUTH_MSG; /* a tcp peer gets no buffer beyond the token's before it sent it */
        if (s->ep.transport != PI_CTL_IPC) continue;
        /* The socket file is 0600 in a directory of ours, but root passes any mode: check who it is. */
        uint32_t uid;
        if (pi_ctl_peer_uid(fd, &uid) != 0 || uid != (uint32_t)geteuid()) {
            pi_ctl_peer_warn("control: a connection from uid %d refused: not this user's (uid %u)",
                             pi_ctl_peer_uid(fd, &uid) == 0 ? (int)uid : -1, (unsigned)geteuid());
            c->authed = false;
            conn_refuse(s, c, 0, -PI_ERR_INVAL, "refused: the control socket serves its own user only");
        }
    }
}

/* Bytes from connection c (*p, *n): frame them into messages and handle each, until they are all
 * taken, the connection is refused, or its replies back up (conn_paused): *p and *n are then what is
 * left. Returns 1 for a shutdown. */
static int conn_input(struct server *s, void *pair, struct conn *c, const uint8_t **p, size_t *n)
{
    while (*n && c->state == CONN_OPEN && !conn_paused(c)) {
        const size_t before = pi_ctl_framer_held(&c->fr);
        const bool was_partial = pi_ctl_framer_partial(&c->fr);
        enum pi_ctl_defect d = PI_CTL_OK;
        int r = pi_ctl_framer_feed(&c->fr, p, n, &d);
        s->held = s->held - before + pi_ctl_framer_held(&c->fr);
        if (r < 0) {
            char t[160];
            pi_ctl_peer_warn("control: a bad message header (%s): the connection is closed", pi_ctl_defect_name(d));
            snprintf(t, sizeof t, "malformed message rejected: %s; the connection is closed", pi_ctl_defect_name(d));
            conn_refuse(s, c, 0, r, t);
            return 0;
        }
        if (!was_partial && pi_ctl_framer_partial(&c->fr) && c->authed) /* before the token: AUTH_MS from the start */
            c->deadline_ns = pi_clock_ns() + (int64_t)IDLE_MS * 1000000;
        if (s->held > FRAME_BUDGET && pi_ctl_framer_held(&c->fr) > SMALL_MSG) {
            pi_ctl_peer_warn("control: %zu bytes of incomplete messages held: the connection adding to them is closed",
                             s->held);
            conn_refuse(s, c, 0, -PI_ERR_RANGE, "busy: too many large messages arriving at once; try again");
            return 0;
        }
        if (r == 0) return 0;
        struct pi_ctl_msg m;
        s->held -= pi_ctl_framer_held(&c->fr);
        int rc = pi_ctl_framer_pop(&c->fr, &m, &d);
        c->deadline_ns = 0;
        if (rc != 0) { /* the stream is still in step: answer and go on, unless the peer has yet to authenticate */
            char t[128];
            snprintf(t, sizeof t, "malformed message rejected: %s", pi_ctl_defect_name(d));
            if (c->authed) reply_error(s, c, 0, rc, t);
            else conn_refuse(s, c, 0, rc, t);
            continue;
        }
        if (!c->authed) {
            const bool ok = m.type == PI_CTL_AUTH && pi_ctl_token_equal(m.u.auth.token, s->token);
            if (!ok) {
                pi_ctl_peer_warn("control: a tcp connection refused: %s",
                                 m.type == PI_CTL_AUTH ? "wrong token" : "no token");
                conn_refuse(s, c, m.request_id, -PI_ERR_INVAL,
                            m.type == PI_CTL_AUTH ? "authentication failed: wrong token"
                                                  : "authentication required: send the token of [control] "
                                                    "token_file first (pi-ctl --token-file)");
            }
            c->authed = ok;
            c->fr.max = 0;
            pi_ctl_msg_clear(&m);
            continue;
        }
        if (handle_msg(s, pair, c, &m)) return 1;
    }
    return 0;
}

/* Keep what conn_input left of a read (its replies backed up) in c->in; false for want of memory. */
static bool conn_keep(struct conn *c, const uint8_t *p, size_t n)
{
    if (!n || c->state != CONN_OPEN) return true; /* a refused connection's bytes are dropped */
    uint8_t *in = malloc(n);
    if (!in) {
        pi_error("control: out of memory for %zu bytes of a connection's input: closing it", n);
        return false;
    }
    memcpy(in, p, n);
    c->in = in;
    c->in_off = 0;
    c->in_len = n;
    return true;
}

/* Handle what connection c has: first the input kept while its replies backed up, then new bytes, at
 * most READ_BURST (so one busy peer cannot hold the main thread), until its replies back up again
 * (conn_paused: what a read brought and was not framed is kept, one read at most, and the socket is not
 * read until it is handled). Returns 1 for a shutdown; a closed or failed connection is marked dead. */
static int conn_read(struct server *s, void *pair, struct conn *c)
{
    static uint8_t buf[65536];
    if (c->in) {
        const uint8_t *p = c->in + c->in_off;
        size_t n = c->in_len - c->in_off;
        const int quit = conn_input(s, pair, c, &p, &n);
        if (n && c->state == CONN_OPEN) {
            c->in_off = c->in_len - n;
            return quit;
        }
        free(c->in);
        c->in = NULL;
        c->in_off = c->in_len = 0;
        if (quit) return 1;
    }
    for (size_t got = 0; got < READ_BURST && !c->dead && !conn_paused(c);) {
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n <= 0) { /* the peer closed (or reset) */
            c->dead = true;
            return 0;
        }
        got += (size_t)n;
        if (c->state == CONN_CLOSING) { /* dropped: read only so that closing does not reset the connection */
            c->ignored += (size_t)n;
            c->dead |= c->ignored > CLOSE_SLACK;
            continue;
        }
        const uint8_t *p = buf;
        size_t left = (size_t)n;
        const int quit = conn_input(s, pair, c, &p, &left);
        if (!conn_keep(c, p, left)) c->dead = true;
        if (quit) return 1;
        if (c->in) return 0;
    }
    return 0;
}

/* Close the connections that are dead, or whose deadline passed: refused ones CLOSE_MS after their
 * ERROR (once it is written our side is shut down, so the peer reads it, then the end; closing with
 * its bytes unread could reset the connection and lose the ERROR), and those that sent no complete
 * message (or left one unfinished) for IDLE_MS. Returns the milliseconds to the next deadline, at
 * most 1000. */
static long conns_sweep(struct server *s)
{
    const int64_t now = pi_clock_ns();
    int64_t next = now + INT64_C(1000000000);
    for (int k = s->n_conns - 1; k >= 0; k--) {
        struct conn *c = &s->conns[k];
        if (c->state == CONN_CLOSING && !c->shut && c->out_off == c->out_len) {
            shutdown(c->fd, SHUT_WR);
            c->shut = true;
        }
        if (c->dead || (c->deadline_ns && now >= c->deadline_ns)) {
            if (!c->dead && c->state == CONN_OPEN && !c->authed)
                pi_ctl_peer_warn("control: a tcp connection sent no token within %d ms: closed", AUTH_MS);
            else if (!c->dead && c->state == CONN_OPEN)
                pi_ctl_peer_warn("control: a connection sent no complete message within %d ms: closed", IDLE_MS);
            conn_drop(s, c);
            continue;
        }
        if (c->deadline_ns) next = PI_MIN(next, c->deadline_ns);
    }
    return (long)((next - now) / 1000000) + 1;
}

/* Listen on s->ep: for ipc a socket made here with mode 0600, for tcp on the host and port. Records
 * the socket file. Returns 0 or -PI_ERR_IO (logged). */
static int control_listen(struct server *s)
{
    char err[512];
    s->lfd = s->ep.transport == PI_CTL_IPC ? pi_ctl_listen_ipc(s->ep.path, err, sizeof err)
                                           : pi_ctl_listen_tcp(&s->ep, err, sizeof err);
    if (s->lfd < 0) {
        pi_error("control: %s", err);
        s->lfd = -1;
        return -PI_ERR_IO;
    }
    note_socket_file(s);
    return 0;
}

/* Binding replaces a stale socket file at the path (pi_ctl_listen_ipc); so before binding, anything there that
 * is not a socket (a file of the user's, something planted) is a reason to refuse, never to delete. */
static bool path_replaceable(const char *ep)
{
    struct stat st;
    if (strncmp(ep, "ipc://", 6) != 0 || lstat(ep + 6, &st) != 0 || S_ISSOCK(st.st_mode)) return true;
    fprintf(stderr, "pi-coordinator: %s exists and is not a socket: refusing to replace it\n", ep + 6);
    pi_error("control endpoint %s: the path exists and is not a socket", ep);
    return false;
}

/* Serve until a signal or a SHUTDOWN: one poll over the generation thread's events, the signals, the
 * listener (unless it rests) and every connection (reading unless its replies back up, writing while
 * they wait). */
static void serve(struct server *s, void *pair, int sfd)
{
    for (long wait_ms = 1000;;) {
        zmq_pollitem_t *it = s->items;
        const int n_conns = s->n_conns;
        it[0] = (zmq_pollitem_t){pair, 0, ZMQ_POLLIN, 0};
        it[1] = (zmq_pollitem_t){NULL, sfd, ZMQ_POLLIN, 0};
        for (int k = 0; k < n_conns; k++) {
            const struct conn *c = &s->conns[k];
            short ev = c->out_off < c->out_len ? ZMQ_POLLOUT : 0;
            if (!conn_paused(c) && !c->in) ev |= ZMQ_POLLIN; /* CLOSING: read to drop */
            if (!conn_paused(c) && c->in) wait_ms = 0;       /* its kept input is handled below */
            it[2 + k] = (zmq_pollitem_t){NULL, c->fd, ev, 0};
        }
        int n_it = 2 + n_conns;
        const int64_t rest_ns = s->accept_at_ns - pi_clock_ns();
        if (rest_ns <= 0) it[n_it++] = (zmq_pollitem_t){NULL, s->lfd, ZMQ_POLLIN, 0};
        else wait_ms = PI_MIN(wait_ms, (long)(rest_ns / 1000000) + 1);
        int n = zmq_poll(it, n_it, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            pi_error("zmq_poll failed: %s", zmq_strerror(errno));
            return;
        }
        if (it[1].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) pi_info("signal %u: shutting down", si.ssi_signo);
            return;
        }
        for (int k = 0; (it[0].revents & ZMQ_POLLIN) && k < EVENT_BURST; k++) {
            struct event ev;
            if (zmq_recv(pair, &ev, sizeof ev, ZMQ_DONTWAIT) != (int)sizeof ev) break;
            on_event(s, &ev);
        }
        /* Nothing below removes a connection before conns_sweep, so conns[k] is still it[2 + k]'s. */
        for (int k = 0; k < n_conns; k++) {
            struct conn *c = &s->conns[k];
            const short re = it[2 + k].revents;
            if ((re & ZMQ_POLLOUT) && !c->dead && !conn_flush(c)) c->dead = true;
            const bool kept = c->in && !conn_paused(c); /* its replies were taken: go on with its input */
            if (((re & (ZMQ_POLLIN | ZMQ_POLLERR)) || kept) && !c->dead && conn_read(s, pair, c)) return;
        }
        if (n_it > 2 + n_conns && (it[2 + n_conns].revents & ZMQ_POLLIN)) on_listener(s);
        wait_ms = conns_sweep(s); /* until the next connection's deadline, those just set included */
    }
}

/* At exit: write what the connections still have queued (the ENDs of cancelled requests), for at most
 * a second, then close them all. */
static void conns_close_all(struct server *s)
{
    for (int64_t until = pi_clock_ns() + INT64_C(1000000000); pi_clock_ns() < until;) {
        int n = 0;
        for (int k = 0; k < s->n_conns; k++) {
            struct conn *c = &s->conns[k];
            if (c->dead || c->out_off == c->out_len) continue;
            if (!conn_flush(c)) c->dead = true;
            else if (c->out_off < c->out_len) s->items[n++] = (zmq_pollitem_t){NULL, c->fd, ZMQ_POLLOUT, 0};
        }
        if (!n || zmq_poll(s->items, n, 50) < 0) break;
    }
    while (s->n_conns) conn_drop(s, &s->conns[s->n_conns - 1]);
}

/* /metrics beyond the scheduler's: the workers' states and, with sparse execution, each layer's
 * realised sparsity (an HTTP thread; the engine is read under engine_mu). */
static void metrics_extra(void *ctx, FILE *f)
{
    struct server *s = ctx;
    pthread_mutex_lock(&s->engine_mu);
    struct pi_worker_info *w = calloc(PI_SUPER_MAX_WORKERS, sizeof *w);
    size_t n = w && s->engine ? PI_MIN(pi_engine_pipeline_workers(s->engine, w, PI_SUPER_MAX_WORKERS), (size_t)PI_SUPER_MAX_WORKERS) : 0;
    if (n) fprintf(f, "# HELP pinfer_worker_ready Whether each worker process is ready (1) or not (0).\n# TYPE pinfer_worker_ready gauge\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "pinfer_worker_ready{role=\"%s\",index=\"%d\"} %d\n", role_str(w[i].role), w[i].index,
                w[i].state == PI_WORKER_READY ? 1 : 0);
    free(w);
    const pi_model_t *m = s->cm->model;
    struct pi_sparse_stats st;
    if (s->engine && pi_sparse_stats_init(&st, m) == 0) {
        if (pi_engine_sparse_stats(s->engine, &st) == 0) {
            fprintf(f, "# HELP pinfer_ffn_sparsity Share of each layer's FFN (token, neuron) pairs not computed.\n"
                       "# TYPE pinfer_ffn_sparsity gauge\n");
            for (int il = 0; il < m->hp.n_layer; il++) {
                struct pi_sparse_summary l;
                pi_sparse_summary(&st, il, &l);
                fprintf(f, "pinfer_ffn_sparsity{layer=\"%d\"} %.6f\n", il, l.sparsity);
            }
            fprintf(f, "# HELP pinfer_predictor_recall Measured recall of each layer's predictor (sampled steps).\n"
                       "# TYPE pinfer_predictor_recall gauge\n");
            for (int il = 0; il < m->hp.n_layer; il++) {
                struct pi_sparse_summary l;
                pi_sparse_summary(&st, il, &l);
                if (l.recall_true) fprintf(f, "pinfer_predictor_recall{layer=\"%d\"} %.6f\n", il, l.recall);
            }
        }
        pi_sparse_stats_free(&st);
    }
    pthread_mutex_unlock(&s->engine_mu);
}

/* Start the HTTP API of [http]; 0, or -1 after one line on stderr. */
static int http_start(struct server *s)
{
    const struct pi_config *c = &s->o->cfg;
    struct pi_http_opts ho = {.listen = c->http_listen,
                              .api_key_file = c->http_api_key_file,
                              .max_body = (size_t)c->http_max_body,
                              .max_connections = (int)c->http_max_connections,
                              /* until the budget is known (fd_budget_apply): the engine's start must not
                               * find the descriptors taken */
                              .start_connections = pi_fd_budget_loading(pi_fd_budget_limit(), pi_fd_budget_count(),
                                                                        (int)c->http_max_connections),
                              .default_max_tokens = -1, /* OpenAI's: to the end ([server] max_tokens caps it) */
                              .default_seed_random = c->seed < 0,
                              .metrics_extra = metrics_extra,
                              .metrics_ctx = s};
    pi_gen_params_from_config(c, &ho.defaults);
    /* the model's name: the file's, without its directory */
    const char *slash = strrchr(c->model_path, '/');
    ho.model_id = slash ? slash + 1 : c->model_path;
    char err[256];
    const char *name = c->chat_template && *c->chat_template ? c->chat_template : NULL;
    const char *tmpl = s->cm->tok ? pi_tokenizer_chat_template(s->cm->tok) : NULL;
    ho.has_chat = pi_chat_resolve(name, tmpl, &ho.chat, err, sizeof err) == 0;
    char chat_err[320];
    if (!ho.has_chat) {
        snprintf(chat_err, sizeof chat_err, "chat completions need a chat format: %s; set [model] chat_template", err);
        ho.chat_error = chat_err;
        pi_warn("http: /v1/chat/completions is off: %s", err);
    }
    s->http = pi_http_start(&ho, s->sched, s->cm->tok);
    return s->http ? 0 : -1;
}

/* The descriptor budget (coordinator/fd-budget.h), once the engine is ready: base is what was open
 * before it started (the HTTP API's connections not counted), so the engine's own count is known. Sets
 * the control socket's cap and the HTTP API's; logs them (a warning when a setting was lowered). */
static void fd_budget_apply(struct server *s, int base)
{
    const struct pi_config *c = &s->o->cfg;
    const int open = pi_fd_budget_count(), http_want = s->http ? (int)c->http_max_connections : 0;
    const int64_t in_use = open - pi_http_connections(s->http);
    struct pi_fd_budget b;
    /* without /proc the count is unknown: the settings as they are, as with no limit */
    pi_fd_budget_split(&b, open >= 0 && base >= 0 ? pi_fd_budget_limit() : -1, in_use, in_use - base,
                       (int)c->max_connections, http_want);
    pi_fd_budget_log(&b, (int)c->max_connections, http_want);
    s->conn_cap = b.control;
    pi_http_set_max_connections(s->http, b.http);
}

int pi_coord_run_server(const struct pi_coord_opts *o, const char *argv0)
{
    (void)argv0;
    struct pi_coord_model cm;
    static struct server s; /* large (the token, the endpoint); one per process */
    char ep[512];
    memset(&s, 0, sizeof s);
    pi_sd_notify_init(); /* before any worker is spawned: they do not inherit NOTIFY_SOCKET */
    if (control_endpoint(&o->cfg, ep, sizeof ep, &s.ep, s.token, sizeof s.token) != 0)
        return PI_EXIT_USAGE; /* before loading the model */
    pi_sd_notify("STATUS=reading the model");
    if (pi_coord_model_open(o, o->cfg.gpu_backend == PI_GPU_NONE, &cm) != 0) return PI_EXIT_USAGE;
    pi_sd_notify("STATUS=starting the workers (mapping and placing the weights)");
    s.o = o;
    s.cm = &cm;
    s.t_start = pi_clock_ns();
    pthread_mutex_init(&s.engine_mu, NULL);
    memcpy(s.endpoint, ep, sizeof ep);
    int status = PI_EXIT_FAILURE, sfd = -1;
    void *pair = NULL;
    pi_fd_budget_raise_limit();
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
    s.lfd = -1;
    pair = zmq_socket(s.zctx, ZMQ_PAIR);
    s.gen_sock = zmq_socket(s.zctx, ZMQ_PAIR);
    int gen_to = GEN_SEND_MS;
    if (!pair || !s.gen_sock || zmq_setsockopt(s.gen_sock, ZMQ_SNDTIMEO, &gen_to, sizeof gen_to) != 0 ||
        zmq_bind(pair, GEN_EP) != 0 || zmq_connect(s.gen_sock, GEN_EP) != 0)
        goto out;
    if (!path_replaceable(s.endpoint)) goto out;
    if (endpoint_in_use(s.endpoint)) {
        fprintf(stderr, "pi-coordinator: another coordinator is serving on %s\n", s.endpoint);
        goto out;
    }
    if (control_listen(&s) != 0) goto out; /* logged */
    bound = true;
    struct pi_sched_opts so = {.n_slots = (int)o->cfg.server_slots,
                               .queue_max = (int)o->cfg.server_queue,
                               .queue_reserve = (int)o->cfg.server_queue_reserve,
                               .max_tokens = o->cfg.server_max_tokens,
                               .timeout_ms = o->cfg.server_timeout * 1000,
                               .restart_max = (int)o->cfg.server_restart_max,
                               .restart_window_ms = o->cfg.server_restart_window * 1000};
    s.sched = pi_sched_new(cm.tok, cm.model->hp.n_vocab, &so);
    if (!s.sched) goto out;
    if (strcmp(o->cfg.http_listen, "off") != 0 && http_start(&s) != 0) goto out; /* one line on stderr */
    int fds_before = pi_fd_budget_count(); /* before the engine: its own count is what it adds */
    if (fds_before >= 0) fds_before -= pi_http_connections(s.http);
    if (pthread_create(&gen, NULL, gen_main, &s) != 0) goto out;
    gen_started = true;
    struct event ev;
    if (zmq_recv(pair, &ev, sizeof ev, 0) != (int)sizeof ev || ev.kind != EV_READY) {
        pi_error("the engine could not be started");
        goto out;
    }
    fd_budget_apply(&s, fds_before); /* with the engine's descriptors (workers, segments) open */
    s.conns = calloc((size_t)s.conn_cap, sizeof *s.conns);
    s.items = calloc((size_t)s.conn_cap + 3, sizeof *s.items);
    if (!s.conns || !s.items) {
        pi_error("control: out of memory for %d connections", s.conn_cap);
        goto out;
    }
    pi_info("control: at most %d connections at once", s.conn_cap);
    printf("pi-coordinator: serving %s on %s\n", o->cfg.model_path, s.endpoint);
    fflush(stdout);
    if (pi_sd_notify_enabled()) {
        char st[1200];
        snprintf(st, sizeof st, "READY=1\nSTATUS=serving %.400s (control %.300s, HTTP %.100s)", o->cfg.model_path, s.endpoint,
                 o->cfg.http_listen);
        pi_sd_notify(st);
    }
    pi_info("control socket: %s", s.endpoint);
    serve(&s, pair, sfd);
    pi_sd_notify("STOPPING=1\nSTATUS=stopping: ending the requests in flight and the workers");
    status = PI_EXIT_OK;
    /* The engine is alive until the generation thread reads the quit job sent below, so it can be
     * cancelled here: a step the GPU worker does not answer (a hung device) would otherwise hold the
     * shutdown for the step channel's whole timeout. */
    atomic_store(&s.cancel, 1);
    pi_sched_stop(s.sched, "cancelled: the coordinator is shutting down"); /* before the cancel below fails the step */
    pthread_mutex_lock(&s.engine_mu);
    pi_engine_pipeline_cancel(s.engine);
    pthread_mutex_unlock(&s.engine_mu);
out:
    if (gen_started) {
        /* Cancel a generation in flight, and still deliver its END (and any queued request's) to the
         * client, until the generation thread has stopped the workers and said goodbye. */
        atomic_store(&s.cancel, 1);
        pi_sched_stop(s.sched, "cancelled: the coordinator is shutting down");
        int to = 100;
        zmq_setsockopt(pair, ZMQ_RCVTIMEO, &to, sizeof to);
        for (int64_t until = pi_clock_ns() + INT64_C(10000000000); pi_clock_ns() < until;) {
            struct event e;
            if (zmq_recv(pair, &e, sizeof e, 0) != (int)sizeof e) continue;
            if (e.kind == EV_EXIT) break;
            if (e.kind == EV_CHUNK || e.kind == EV_END) on_event(&s, &e);
        }
        pthread_join(gen, NULL);
    }
    pi_sched_stop(s.sched, "the coordinator is shutting down"); /* when the engine never started */
    pi_http_stop(&s.http); /* its handlers have seen their jobs end */
    pi_sched_destroy(&s.sched);
    int linger = 0;
    if (pair) zmq_setsockopt(pair, ZMQ_LINGER, &linger, sizeof linger);
    if (s.gen_sock) zmq_setsockopt(s.gen_sock, ZMQ_LINGER, &linger, sizeof linger);
    if (pair) zmq_close(pair);
    if (s.gen_sock) zmq_close(s.gen_sock);
    if (s.conns && s.items) conns_close_all(&s);
    if (s.lfd >= 0) close(s.lfd);
    free(s.conns);
    free(s.items);
    explicit_bzero(s.token, sizeof s.token);
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
