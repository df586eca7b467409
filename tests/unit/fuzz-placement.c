/*
 * tests/unit/fuzz-placement.c - libFuzzer target for the placement map's wire form
 * (compute/placement.h, pi_placement_from_wire: the bytes a worker maps from the coordinator's
 * segment, untrusted; `make fuzz`, needs clang).
 *
 * An input's first three bytes choose the shape the receiver expects (1-4 layers, 1-64 neurons, 0-3
 * CPU workers); the rest is the wire form. Whatever the bytes, the parser must not read outside them,
 * and a form it accepts must be a valid map: each layer's groups a permutation of its ids, ascending
 * within a group, no cold neuron without a CPU worker, and writing it again must give back exactly
 * the bytes it was read from. Built with ASan and UBSan. Not part of `make check`. Seeds:
 * tests/unit/fuzz-placement-seeds/.
 */
#include "config.h"
#include "compute/placement.h"
#include "lib/common.h"
#include "lib/log.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC); /* the parser logs every refusal */
        if (devnull >= 0) pi_log_set_fd(devnull);
        quiet = 1;
    }
    if (size < 3) return 0;
    const int n_layer = 1 + data[0] % 4, n_ff = 1 + data[1] % 64, n_workers = data[2] % 4;
    const uint8_t *wire = data + 3;
    const size_t len = size - 3;
    /* the parser gets exactly len bytes of its own: ASan sees any read past them */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return 0;
    memcpy(copy, wire, len);
    struct pi_placement *p = NULL;
    char err[128];
    int rc = pi_placement_from_wire(copy, len, n_layer, n_ff, n_workers, &p, err, sizeof err);
    if (!memchr(err, '\0', sizeof err) && rc != 0) abort();
    if (rc == 0) {
        if (!p || p->n_layer != n_layer || p->n_ff != n_ff || p->n_workers != n_workers) abort();
        uint8_t *seen = calloc((size_t)n_ff, 1);
        if (!seen) abort();
        for (int il = 0; il < n_layer; il++) {
            memset(seen, 0, (size_t)n_ff);
            int64_t total = 0;
            for (int g = 0; g <= n_workers; g++) {
                int64_t n;
                const int32_t *ids = pi_placement_group(p, il, g, &n);
                for (int64_t j = 0; j < n; j++) {
                    if (ids[j] < 0 || ids[j] >= n_ff || seen[ids[j]] || (j > 0 && ids[j] <= ids[j - 1])) abort();
                    seen[ids[j]] = 1;
                }
                total += n;
            }
            int64_t hot;
            pi_placement_hot(p, il, &hot);
            if (total != n_ff || (n_workers == 0 && hot != n_ff)) abort();
        }
        free(seen);
        const size_t back_len = pi_placement_wire_size(p);
        uint8_t *back = malloc(back_len);
        if (!back) abort();
        pi_placement_to_wire(p, back);
        if (back_len != len || memcmp(back, copy, len) != 0) abort();
        free(back);
    } else if (p) {
        abort();
    }
    pi_placement_destroy(&p);
    free(copy);
    return 0;
}
