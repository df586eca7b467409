/* tests/unit/test-exchange.c - the per-layer exchange (ipc/exchange.h): layout arithmetic, 1/2/3 forked
 * CPU "workers" computing a known function of x and the mask into their partials over many layers,
 * checked by the parent against a scalar reference; corrupted headers and steps rejected; a worker
 * killed with SIGKILL turns into a timeout naming it; abort. */
#include "config.h"
#include "ipc/exchange.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_EMBD 96
#define MAX_TOKENS 4
#define N_FF 200
#define N_LAYERS 8
#define STEPS 400
#define SPIN 200
#define TIMEOUT_NS (3000 * 1000000LL)

/* Spin budget of the multi-worker runs (workers inherit it through fork). 0 makes every wait sleep,
 * which exercises the sleeper counts and the skipped wake-ups of ipc/futex.c hardest. */
static unsigned spin_now = SPIN;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static int mask_bit(const uint64_t *row, uint32_t j) { return (int)(row[j / 64] >> (j % 64) & 1); }

/* The known function a worker computes: partial_w[t][i] = active(t, i mod n_ff) ? (w+1)*x[t][i] +
 * layer : 0, where active is every neuron for PI_EXCHANGE_ALL and the mask bit otherwise. */
static float worker_fn(uint32_t w, float x, uint32_t layer, int active)
{
    return active ? (float)(w + 1) * x + (float)layer : 0.0f;
}

/* A CPU worker in a forked child: attach by fd (its own mapping), join, tell the parent through
 * `ready_fd` (in the pipeline that is the READY message: nothing is published before every worker
 * joined), serve `steps` publishes. Exit status: 0 ok, 1x attach/join, 2x wait, 3x unexpected step. */
static int worker_main(int fd, uint32_t w, int steps, int ready_fd)
{
    pi_exchange_t *ex = NULL;
    uint32_t seen, mw;
    if (pi_exchange_attach(fd, &ex) < 0) return 10;
    if (pi_exchange_join(ex, w, &seen) < 0) return 11;
    if (write(ready_fd, "r", 1) != 1) return 12;
    mw = pi_exchange_get_layout(ex)->mask_words;
    for (int s = 0; s < steps; s++) {
        struct pi_exchange_step st;
        float *out = pi_exchange_partial(ex, w);
        int rc = pi_exchange_wait_publish(ex, seen, spin_now, TIMEOUT_NS, &st);
        if (rc < 0) return 20;
        if (st.seq != seen + 1 || st.layer != (uint32_t)s % N_LAYERS) return 30;
        for (uint32_t t = 0; t < st.n_tokens; t++)
            for (uint32_t i = 0; i < N_EMBD; i++) {
                int active = st.mask ? mask_bit(st.mask + (size_t)t * mw, i % N_FF) : 1;
                out[(size_t)t * N_EMBD + i] = worker_fn(w, st.x[(size_t)t * N_EMBD + i], st.layer, active);
            }
        if (pi_exchange_post_partial(ex, w, st.seq) < 0) return 21;
        seen = st.seq;
    }
    pi_exchange_destroy(&ex);
    return 0;
}

/* Fork worker w and wait until it has joined. */
static pid_t spawn_worker(pi_exchange_t *ex, uint32_t w, int steps)
{
    int p[2];
    char c;
    pid_t pid;
    if (pipe(p) != 0) tap_bail("pipe failed");
    pid = fork();
    if (pid == 0) {
        alarm(30);
        close(p[0]);
        _exit(worker_main(dup(pi_exchange_fd(ex)), w, steps, p[1]));
    }
    close(p[1]);
    if (pid < 0 || read(p[0], &c, 1) != 1) tap_bail("worker %u did not start", w);
    close(p[0]);
    return pid;
}

static void test_layout(void)
{
    struct pi_exchange_params p = {.n_embd = 4096, .max_tokens = 3, .n_ff = 11008, .n_layers = 32, .n_workers = 3};
    struct pi_exchange_layout l;
    int rc = pi_exchange_layout(&p, &l);
    uint64_t ends[6];
    tap_is_int(rc, 0, "layout of a 7B-sized exchange");
    tap_ok(l.mask_words == (11008 + 63) / 64, "mask words round up");
    tap_ok(l.x_size == 3ull * 4096 * 4 && l.mask_size == 3ull * l.mask_words * 8 &&
               l.done_size == 3 * 64 && l.partial_stride == 3ull * 4096 * 4 && l.partial_size == 3 * l.partial_stride,
           "section sizes");
    ends[0] = l.ctl_off + l.ctl_size;
    ends[1] = l.done_off + l.done_size;
    ends[2] = l.x_off + l.x_size;
    ends[3] = l.mask_off + l.mask_size;
    ends[4] = l.partial_off + l.partial_size;
    ends[5] = l.stats_off + l.stats_size;
    tap_ok(l.stats_size == 32ull * PI_EXCHANGE_STATS_FIELDS * 8, "the stats section: %u uint64 per layer", PI_EXCHANGE_STATS_FIELDS);
    tap_ok(l.ctl_off >= sizeof(struct pi_shm_header) && ends[0] <= l.done_off && ends[1] <= l.x_off &&
               ends[2] <= l.mask_off && ends[3] <= l.partial_off && ends[4] <= l.stats_off && ends[5] <= l.total,
           "sections in order, not overlapping, inside the total");
    tap_ok(l.ctl_off % 64 == 0 && l.done_off % 64 == 0 && l.x_off % 64 == 0 && l.mask_off % 64 == 0 &&
               l.partial_off % 64 == 0 && l.partial_stride % 64 == 0 && l.stats_off % 64 == 0,
           "every section and partial slot cache-line aligned");
    p.n_embd = 4097;
    tap_ok(pi_exchange_layout(&p, &l) == 0 && l.partial_stride % 64 == 0 && l.partial_stride >= 3ull * 4097 * 4,
           "odd widths pad the partial stride");
    p.n_workers = 0;
    tap_is_int(pi_exchange_layout(&p, &l), -PI_ERR_INVAL, "zero workers rejected");
    p.n_workers = PI_EXCHANGE_MAX_WORKERS + 1;
    tap_is_int(pi_exchange_layout(&p, &l), -PI_ERR_INVAL, "too many workers rejected");
    p.n_workers = 1;
    p.n_embd = PI_EXCHANGE_MAX_EMBD + 1;
    tap_is_int(pi_exchange_layout(&p, &l), -PI_ERR_INVAL, "too wide rejected");
    p.n_embd = PI_EXCHANGE_MAX_EMBD;
    p.max_tokens = PI_EXCHANGE_MAX_TOKENS;
    p.n_workers = PI_EXCHANGE_MAX_WORKERS;
    tap_is_int(pi_exchange_layout(&p, &l), -PI_ERR_RANGE, "a layout above the segment limit is a range error");
}

/* Parent side of the multi-worker run: publish STEPS layers with random x, n_tokens and masks,
 * merge, compare with the reference. Returns the number of mismatching steps. */
static int drive(pi_exchange_t *ex, uint32_t nw)
{
    static float out[MAX_TOKENS * N_EMBD];
    uint32_t mw = pi_exchange_get_layout(ex)->mask_words;
    int bad = 0;
    for (int s = 0; s < STEPS; s++) {
        uint32_t n_tokens = 1 + rnd() % MAX_TOKENS, layer = (uint32_t)s % N_LAYERS, seq;
        uint32_t flags = (rnd() & 1) ? PI_EXCHANGE_ALL : PI_EXCHANGE_MASK | PI_EXCHANGE_GATE_SKIP;
        float *x = pi_exchange_x(ex);
        uint64_t *mask = pi_exchange_mask(ex);
        for (uint32_t i = 0; i < n_tokens * N_EMBD; i++) x[i] = (float)((int32_t)rnd() % 20000) / 1000.0f;
        for (uint32_t i = 0; i < n_tokens * mw; i++) mask[i] = (uint64_t)rnd() << 32 | rnd();
        if (pi_exchange_publish(ex, layer, n_tokens, flags, &seq) < 0 ||
            pi_exchange_wait_partials(ex, seq, spin_now, TIMEOUT_NS) < 0)
            return bad + 1000;
        memset(out, 0, sizeof out);
        pi_exchange_merge(ex, n_tokens, out);
        for (uint32_t t = 0; t < n_tokens; t++)
            for (uint32_t i = 0; i < N_EMBD; i++) {
                double want = 0;
                int active = (flags & PI_EXCHANGE_MASK) ? mask_bit(mask + (size_t)t * mw, i % N_FF) : 1;
                for (uint32_t w = 0; w < nw; w++) want += worker_fn(w, x[t * N_EMBD + i], layer, active);
                if (fabs(out[t * N_EMBD + i] - want) > 1e-4 * (1 + fabs(want))) {
                    bad++;
                    t = n_tokens;
                    break;
                }
            }
    }
    return bad;
}

static void test_workers(uint32_t nw)
{
    struct pi_exchange_params p = {.n_embd = N_EMBD, .max_tokens = MAX_TOKENS, .n_ff = N_FF, .n_layers = N_LAYERS,
                                   .n_workers = nw};
    pi_exchange_t *ex = pi_exchange_new(&p);
    pid_t pids[3];
    int bad, all_ok = 1;
    if (!ex) {
        tap_ok(0, "create exchange for %u workers", nw);
        return;
    }
    for (uint32_t w = 0; w < nw; w++) pids[w] = spawn_worker(ex, w, STEPS);
    bad = drive(ex, nw);
    for (uint32_t w = 0; w < nw; w++) {
        int st = -1;
        if (bad) kill(pids[w], SIGKILL);
        waitpid(pids[w], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            all_ok = 0;
            tap_diag("worker %u: status 0x%x", w, st);
        }
    }
    tap_ok(bad == 0, "%u worker(s), spin %u: merged partials match the reference over %d layers", nw, spin_now,
           STEPS);
    if (bad) tap_diag("  %d mismatching steps (1000+: a publish or wait failed)", bad);
    tap_ok(all_ok, "%u workers saw every step in order and exited cleanly", nw);
    pi_exchange_destroy(&ex);
}

/* The sequence wraps from 2^32-1 to 0 in the middle of a run: publish, wait_publish, post,
 * wait_partials and the skipped-sequence check all work modulo 2^32. One process plays both sides. */
static void test_wrap(void)
{
    struct pi_exchange_params p = {.n_embd = 8, .max_tokens = 1, .n_ff = 8, .n_layers = 2, .n_workers = 1};
    pi_exchange_t *ex = pi_exchange_new(&p);
    struct pi_exchange_ctl *c;
    uint32_t seen, seq = 0;
    int ok = 1, wrapped = 0;
    if (!ex) {
        tap_ok(0, "create exchange for the wrap test");
        return;
    }
    c = (struct pi_exchange_ctl *)(void *)((uint8_t *)pi_exchange_x(ex) - pi_exchange_get_layout(ex)->x_off +
                                           pi_exchange_get_layout(ex)->ctl_off);
    atomic_store(&c->publish_seq, UINT32_MAX - 2);
    pi_exchange_join(ex, 0, &seen);
    for (int s = 0; s < 6 && ok; s++) {
        struct pi_exchange_step st;
        float out[8] = {0};
        for (int i = 0; i < 8; i++) pi_exchange_x(ex)[i] = (float)(s * 8 + i);
        ok = pi_exchange_publish(ex, (uint32_t)s % 2, 1, PI_EXCHANGE_ALL, &seq) == 0 && seq == seen + 1 &&
             pi_exchange_wait_publish(ex, seen, 0, 0, &st) == 0 && st.seq == seq;
        if (!ok) break;
        for (int i = 0; i < 8; i++) pi_exchange_partial(ex, 0)[i] = 2.0f * st.x[i];
        ok = pi_exchange_post_partial(ex, 0, st.seq) == 0 && pi_exchange_wait_partials(ex, seq, 0, 0) == 0;
        pi_exchange_merge(ex, 1, out);
        for (int i = 0; i < 8 && ok; i++) ok = out[i] == 2.0f * (float)(s * 8 + i);
        wrapped |= seq == 0;
        seen = seq;
    }
    tap_ok(ok && wrapped && seq == 3, "six steps across the 2^32 wrap of publish_seq (last seq %u)", seq);
    pi_exchange_destroy(&ex);
}

/* Attach a dup of ex's fd after `corrupt` changed the segment; returns the error. */
static int try_attach(pi_exchange_t *ex)
{
    pi_exchange_t *a = NULL;
    int fd = dup(pi_exchange_fd(ex));
    int rc = pi_exchange_attach(fd, &a);
    if (rc == 0) pi_exchange_destroy(&a);
    else close(fd);
    return rc;
}

static void test_corrupt_headers(void)
{
    struct pi_exchange_params p = {.n_embd = 64, .max_tokens = 2, .n_ff = 100, .n_layers = 4, .n_workers = 2};
    pi_exchange_t *ex = pi_exchange_new(&p);
    struct pi_exchange_ctl *c, save;
    struct pi_shm_header *h, hsave;
    if (!ex) {
        tap_ok(0, "create exchange for corruption");
        return;
    }
    /* The segment base is x minus its offset; the test corrupts the shared bytes directly. */
    h = (struct pi_shm_header *)(void *)((uint8_t *)pi_exchange_x(ex) - pi_exchange_get_layout(ex)->x_off);
    c = (struct pi_exchange_ctl *)(void *)((uint8_t *)h + pi_exchange_get_layout(ex)->ctl_off);
    memcpy(&save, c, offsetof(struct pi_exchange_ctl, step_layer));
    memcpy(&hsave, h, sizeof hsave);
    tap_is_int(try_attach(ex), 0, "a good exchange attaches");

    c->magic ^= 1;
    tap_is_int(try_attach(ex), -PI_ERR_FORMAT, "bad exchange magic rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    c->version = 99;
    tap_is_int(try_attach(ex), -PI_ERR_UNSUPPORTED, "other exchange version rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    c->params.n_embd = 1 << 16; /* a bigger model than the segment was made for */
    tap_is_int(try_attach(ex), -PI_ERR_RANGE, "parameters larger than the segment rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    c->params.n_workers = 3;
    tap_is_int(try_attach(ex), -PI_ERR_RANGE, "more workers than slots rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    c->params.n_workers = 0;
    tap_is_int(try_attach(ex), -PI_ERR_INVAL, "zero workers rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    c->params.max_tokens = 0xffffffffu;
    tap_is_int(try_attach(ex), -PI_ERR_INVAL, "absurd max_tokens rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    c->mask_words = 1000;
    tap_is_int(try_attach(ex), -PI_ERR_FORMAT, "inconsistent mask_words rejected");
    memcpy(c, &save, offsetof(struct pi_exchange_ctl, step_layer));
    h->sections[4].offset += 64; /* still inside the file, but not where the parameters put it */
    h->sections[4].size -= 64;
    tap_is_int(try_attach(ex), -PI_ERR_RANGE, "section table not matching the parameters rejected");
    memcpy(h, &hsave, sizeof hsave);
    h->n_sections = 3;
    tap_is_int(try_attach(ex), -PI_ERR_RANGE, "missing sections rejected");
    memcpy(h, &hsave, sizeof hsave);
    h->kind = PI_SHM_KIND_TEST;
    tap_is_int(try_attach(ex), -PI_ERR_FORMAT, "a segment of another kind rejected");
    memcpy(h, &hsave, sizeof hsave);
    tap_is_int(try_attach(ex), 0, "restored exchange attaches again");
    pi_exchange_destroy(&ex);
}

/* A published step corrupted in shared memory is rejected by the worker, never used. */
static void test_corrupt_steps(void)
{
    struct pi_exchange_params p = {.n_embd = 32, .max_tokens = 2, .n_ff = 64, .n_layers = 4, .n_workers = 1};
    pi_exchange_t *ex = pi_exchange_new(&p);
    struct pi_exchange_ctl *c;
    struct pi_exchange_step st;
    uint32_t seen, seq;
    if (!ex) {
        tap_ok(0, "create exchange for step corruption");
        return;
    }
    c = (struct pi_exchange_ctl *)(void *)((uint8_t *)pi_exchange_x(ex) - pi_exchange_get_layout(ex)->x_off +
                                           pi_exchange_get_layout(ex)->ctl_off);
    tap_is_int(pi_exchange_publish(ex, 4, 1, PI_EXCHANGE_ALL, &seq), -PI_ERR_INVAL, "publish of layer >= n_layers refused");
    tap_is_int(pi_exchange_publish(ex, 0, 3, PI_EXCHANGE_ALL, &seq), -PI_ERR_INVAL, "publish of too many tokens refused");
    tap_is_int(pi_exchange_publish(ex, 0, 1, PI_EXCHANGE_ALL | PI_EXCHANGE_MASK, &seq), -PI_ERR_INVAL,
               "publish with ALL and MASK refused");
    tap_is_int(pi_exchange_publish(ex, 0, 1, 1u << 7, &seq), -PI_ERR_INVAL, "publish with unknown flags refused");
    pi_exchange_join(ex, 0, &seen);
    pi_exchange_publish(ex, 1, 2, PI_EXCHANGE_MASK, &seq);
    tap_ok(pi_exchange_wait_publish(ex, seen, 0, 0, &st) == 0 && st.seq == seen + 1 && st.layer == 1 &&
               st.n_tokens == 2 && st.mask == pi_exchange_mask(ex) && st.x == pi_exchange_x(ex),
           "a valid step is seen as published");
    atomic_store(&c->step_n_tokens, 3);
    tap_is_int(pi_exchange_wait_publish(ex, seen, 0, 0, &st), -PI_ERR_FORMAT, "step with n_tokens > max rejected");
    atomic_store(&c->step_n_tokens, 0);
    tap_is_int(pi_exchange_wait_publish(ex, seen, 0, 0, &st), -PI_ERR_FORMAT, "step with zero tokens rejected");
    atomic_store(&c->step_n_tokens, 1);
    atomic_store(&c->step_layer, 4);
    tap_is_int(pi_exchange_wait_publish(ex, seen, 0, 0, &st), -PI_ERR_FORMAT, "step with layer >= n_layers rejected");
    atomic_store(&c->step_layer, 0);
    atomic_store(&c->step_flags, 0);
    tap_is_int(pi_exchange_wait_publish(ex, seen, 0, 0, &st), -PI_ERR_FORMAT, "step with no kind flag rejected");
    atomic_store(&c->step_flags, PI_EXCHANGE_ALL);
    atomic_store(&c->publish_seq, seen + 2);
    tap_is_int(pi_exchange_wait_publish(ex, seen, 0, 0, &st), -PI_ERR_FORMAT, "skipped sequence rejected");
    atomic_store(&c->publish_seq, seen + 1);
    tap_ok(pi_exchange_wait_publish(ex, seen, 0, 0, &st) == 0 && st.mask == NULL, "ALL step carries no mask");
    tap_is_int(pi_exchange_wait_publish(ex, seen + 1, 0, 10 * 1000000LL, &st), -PI_ERR_TIMEOUT,
               "no new publish: wait_publish times out");
    tap_ok(pi_exchange_partial(ex, 1) == NULL, "partial slot of a worker out of range is NULL");
    tap_is_int(pi_exchange_post_partial(ex, 1, seq), -PI_ERR_INVAL, "post from a worker out of range refused");
    tap_is_int(pi_exchange_join(ex, 5, &seen), -PI_ERR_INVAL, "join as a worker out of range refused");
    pi_exchange_post_partial(ex, 0, seq + 1);
    tap_is_int(pi_exchange_wait_partials(ex, seq, 0, 0), -PI_ERR_PEER, "a worker ahead of the publish is a protocol error");
    pi_exchange_destroy(&ex);
}

/* Worker 1 is killed with SIGKILL mid-run: wait_partials must time out, naming it. */
static void test_dead_worker(void)
{
    struct pi_exchange_params p = {.n_embd = N_EMBD, .max_tokens = 1, .n_ff = N_FF, .n_layers = N_LAYERS, .n_workers = 2};
    pi_exchange_t *ex = pi_exchange_new(&p);
    pid_t pids[2];
    int fds[2], rc, st;
    uint32_t seq;
    int64_t t0;
    char log[4096] = "", want[64];
    ssize_t n;
    if (!ex || pipe(fds) != 0) {
        tap_ok(0, "set up the dead-worker test");
        pi_exchange_destroy(&ex);
        return;
    }
    pids[0] = spawn_worker(ex, 0, 2);
    pids[1] = spawn_worker(ex, 1, 2);
    pi_exchange_publish(ex, 0, 1, PI_EXCHANGE_ALL, &seq);
    tap_is_int(pi_exchange_wait_partials(ex, seq, SPIN, TIMEOUT_NS), 0, "both workers answer the first layer");
    kill(pids[1], SIGKILL);
    waitpid(pids[1], &st, 0);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    pi_log_set_fd(fds[1]);
    pi_exchange_publish(ex, 1, 1, PI_EXCHANGE_ALL, &seq);
    t0 = pi_clock_ns();
    rc = pi_exchange_wait_partials(ex, seq, SPIN, 200 * 1000000LL);
    t0 = pi_clock_ns() - t0;
    pi_log_set_fd(2);
    n = read(fds[0], log, sizeof log - 1);
    log[n > 0 ? n : 0] = '\0';
    tap_is_int(rc, -PI_ERR_TIMEOUT, "a killed worker makes wait_partials time out");
    tap_ok(t0 >= 190 * 1000000LL && t0 < 10000 * 1000000LL, "after the 200 ms timeout (%.1f ms), not a hang", t0 / 1e6);
    snprintf(want, sizeof want, "CPU worker 1 (pid %d) is late", (int)pids[1]);
    tap_ok(strstr(log, want) != NULL, "the error names the late worker and its pid");
    tap_diag("%s", log);
    waitpid(pids[0], &st, 0);
    tap_ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the surviving worker finished its steps");
    close(fds[0]);
    close(fds[1]);
    pi_exchange_destroy(&ex);
}

/* A worker blocked in wait_publish without timeout is released by pi_exchange_abort. */
static void test_abort(void)
{
    struct pi_exchange_params p = {.n_embd = 16, .max_tokens = 1, .n_ff = 16, .n_layers = 2, .n_workers = 2};
    pi_exchange_t *ex = pi_exchange_new(&p);
    uint32_t seen, seq;
    pid_t pid;
    int st = -1;
    int64_t t0;
    if (!ex) {
        tap_ok(0, "create exchange for abort");
        return;
    }
    pid = fork();
    if (pid == 0) {
        pi_exchange_t *a = NULL;
        struct pi_exchange_step s;
        alarm(10);
        if (pi_exchange_attach(dup(pi_exchange_fd(ex)), &a) < 0 || pi_exchange_join(a, 0, &seen) < 0) _exit(2);
        _exit(pi_exchange_wait_publish(a, seen, SPIN, PI_FUTEX_FOREVER, &s) == -PI_ERR_PEER ? 0 : 1);
    }
    usleep(50 * 1000);
    t0 = pi_clock_ns();
    pi_exchange_abort(ex, PI_ERR_PEER);
    waitpid(pid, &st, 0);
    t0 = pi_clock_ns() - t0;
    tap_ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "abort releases a worker waiting without timeout");
    tap_ok(t0 < 8000 * 1000000LL, "promptly (%.1f ms; the bound is generous for loaded CI)", t0 / 1e6);
    tap_is_int(pi_exchange_aborted(ex), PI_ERR_PEER, "the abort word holds the reason");
    tap_is_int(pi_exchange_publish(ex, 0, 1, PI_EXCHANGE_ALL, &seq), 0, "publish still possible");
    tap_is_int(pi_exchange_wait_partials(ex, seq, 0, 1000 * 1000000LL), -PI_ERR_PEER, "wait_partials returns at once when aborted");
    pi_exchange_destroy(&ex);
}

int main(void)
{
    alarm(60);
    pi_log_set_program("test-exchange");
    test_layout();
    test_workers(1);
    test_workers(2);
    test_workers(3);
    spin_now = 0;
    test_workers(2);
    spin_now = SPIN;
    test_wrap();
    test_corrupt_headers();
    test_corrupt_steps();
    test_dead_worker();
    test_abort();
    return tap_done();
}
