/*
 * coordinator/bench-exchange.c - pi-bench --exchange: the per-layer exchange's round trip between
 * processes (coordinator/bench.h; was tools/pi-bench-exchange, doc/ipc.md).
 *
 * Measures what one layer of the pipeline pays for crossing processes: from the GPU side's
 * pi_exchange_publish to the moment every CPU worker's partial is posted and merged into the
 * output, with the workers doing only a trivial computation (partial = (w+1) * x) so that the
 * number is the exchange's own cost. Workers are forked processes that attach the segment by fd,
 * as pi-cpu-worker does. For each width (--n-embd) and worker count (--cpu-workers), with spin 0
 * (always sleep in the kernel) and with --spin pause iterations, it prints median, p99 and mean
 * microseconds over --iters round trips of --batch rows.
 */
#include "config.h"
#include "coordinator/bench.h"
#include "ipc/exchange.h"
#include "lib/common.h"
#include "lib/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_NS (2000 * 1000000LL)

struct bench_cfg {
    uint32_t n_embd, n_workers, n_tokens;
    unsigned spin;
    int iters, warmup;
};

/* Worker process: serve publishes until aborted. */
static int worker_loop(int fd, uint32_t w, unsigned spin, int ready_fd)
{
    pi_exchange_t *ex = NULL;
    uint32_t seen, n_embd;
    if (pi_exchange_attach(fd, &ex) < 0 || pi_exchange_join(ex, w, &seen) < 0) return 1;
    n_embd = pi_exchange_params(ex)->n_embd;
    if (write(ready_fd, "r", 1) != 1) return 1;
    close(ready_fd);
    for (;;) {
        struct pi_exchange_step st;
        float *out = pi_exchange_partial(ex, w);
        int rc = pi_exchange_wait_publish(ex, seen, spin, PI_FUTEX_FOREVER, &st);
        if (rc == -PI_ERR_PEER) break; /* the benchmark is over */
        if (rc < 0) return 2;
        for (size_t i = 0; i < (size_t)st.n_tokens * n_embd; i++) out[i] = (float)(w + 1) * st.x[i];
        if (pi_exchange_post_partial(ex, w, st.seq) < 0) return 3;
        seen = st.seq;
    }
    pi_exchange_destroy(&ex);
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Run one configuration; prints a table row. Returns 0 or -1. */
static int bench_one(const struct bench_cfg *cfg)
{
    struct pi_exchange_params p = {.n_embd = cfg->n_embd, .max_tokens = cfg->n_tokens, .n_ff = 64,
                                   .n_layers = 1, .n_workers = cfg->n_workers};
    pi_exchange_t *ex = pi_exchange_new(&p);
    int64_t *t = calloc((size_t)cfg->iters, sizeof *t);
    float *out = calloc((size_t)cfg->n_tokens * cfg->n_embd, sizeof *out);
    pid_t pids[PI_EXCHANGE_MAX_WORKERS];
    uint32_t nw = 0;
    int rc = 0;
    double sum = 0;

    if (!ex || !t || !out) {
        rc = -1;
        goto out;
    }
    for (; nw < cfg->n_workers; nw++) {
        int pfd[2];
        char c;
        if (pipe(pfd) != 0) break;
        pids[nw] = fork();
        if (pids[nw] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* die with the benchmark, whatever happens to it */
            close(pfd[0]);
            _exit(worker_loop(dup(pi_exchange_fd(ex)), nw, cfg->spin, pfd[1]));
        }
        close(pfd[1]);
        if (pids[nw] < 0 || read(pfd[0], &c, 1) != 1) {
            close(pfd[0]);
            break;
        }
        close(pfd[0]);
    }
    if (nw < cfg->n_workers) {
        fprintf(stderr, "pi-bench: --exchange: worker %u did not start\n", nw);
        rc = -1;
        goto stop;
    }
    {
        float *x = pi_exchange_x(ex);
        for (size_t i = 0; i < (size_t)cfg->n_tokens * cfg->n_embd; i++) x[i] = (float)(i % 17) * 0.25f;
    }
    for (int i = -cfg->warmup; i < cfg->iters; i++) {
        uint32_t seq;
        int64_t t0 = pi_clock_ns();
        if (pi_exchange_publish(ex, 0, cfg->n_tokens, PI_EXCHANGE_ALL, &seq) < 0 ||
            pi_exchange_wait_partials(ex, seq, cfg->spin, WAIT_NS) < 0) {
            rc = -1;
            goto stop;
        }
        pi_exchange_merge(ex, cfg->n_tokens, out);
        if (i >= 0) t[i] = pi_clock_ns() - t0;
    }
    qsort(t, (size_t)cfg->iters, sizeof *t, cmp_i64);
    for (int i = 0; i < cfg->iters; i++) sum += (double)t[i];
    printf("| %u | %u | %u | %u | %.1f | %.1f | %.1f |\n", cfg->n_embd, cfg->n_tokens, cfg->n_workers, cfg->spin,
           t[cfg->iters / 2] / 1e3, t[(size_t)((double)cfg->iters * 0.99)] / 1e3, sum / cfg->iters / 1e3);
    fflush(stdout);
stop:
    pi_exchange_abort(ex, PI_ERR_PEER);
    for (uint32_t w = 0; w < nw; w++) {
        int st;
        waitpid(pids[w], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = -1;
    }
out:
    pi_exchange_destroy(&ex);
    free(t);
    free(out);
    return rc;
}

int pi_bench_exchange(const struct pi_bench_opts *b)
{
    struct bench_cfg cfg = {.n_tokens = (uint32_t)b->batch, .spin = (unsigned)b->spin, .iters = (int)b->iters};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int rc = 0;
    int64_t max_workers = 0;
    cfg.warmup = PI_MIN(cfg.iters / 10 + 10, 500);
    for (int w = 0; w < b->cpu_workers.n; w++) {
        if (b->cpu_workers.v[w] < 1) {
            fprintf(stderr, "pi-bench: --exchange: --cpu-workers must be at least 1\n");
            return 2;
        }
        max_workers = PI_MAX(max_workers, b->cpu_workers.v[w]);
    }
    signal(SIGPIPE, SIG_IGN);
    printf("# exchange round trip: publish -> every partial posted -> merged; %d iterations; %ld CPUs online\n",
           cfg.iters, ncpu);
    printf("| n_embd | tokens | workers | spin | median us | p99 us | mean us |\n");
    printf("|--:|--:|--:|--:|--:|--:|--:|\n");
    for (int e = 0; e < b->n_embd.n; e++)
        for (int w = 0; w < b->cpu_workers.n; w++) {
            unsigned spins[2] = {0, cfg.spin};
            for (unsigned s = 0; s < (cfg.spin ? 2u : 1u); s++) {
                struct bench_cfg one = cfg;
                one.n_embd = (uint32_t)b->n_embd.v[e];
                one.n_workers = (uint32_t)b->cpu_workers.v[w];
                one.spin = spins[s];
                if (bench_one(&one) < 0) rc = 1;
            }
        }
    if (ncpu > 0 && max_workers + 1 > ncpu)
        printf("# note: %lld workers + the publishing process oversubscribe %ld CPUs: spinning waiters steal the "
               "CPU from the process they wait for, so these numbers include scheduler latency\n",
               (long long)max_workers, ncpu);
    return rc;
}
