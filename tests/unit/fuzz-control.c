/*
 * tests/unit/fuzz-control.c - libFuzzer target for the control protocol's decoder (ipc/control.c;
 * `make fuzz`, needs clang).
 *
 * Each input is one frame as a peer would send it. pi_ctl_decode must accept or reject it without
 * reading outside it; an accepted message must encode again, and for the binary types (all but the
 * JSON bodies, which jansson may re-serialise differently) the encoding must be the input byte for
 * byte: one message, one wire form, so two readers can never disagree about what a frame says. The
 * re-encoded frame must decode again. The same bytes then go through the stream framer
 * (ipc/control-stream.h) in pieces of 1 to 13 bytes: it never holds more than one message's bound,
 * and an accepted frame is exactly one message of the stream, so the coordinator's byte-stream
 * reader and the decoder agree. Built with ASan and UBSan (leaks are findings too). Not part of
 * `make check`. Seeds: tests/unit/fuzz-control-seeds/, one frame per file.
 */
#include "config.h"
#include "ipc/control.h"
#include "ipc/control-stream.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        pi_log_set_level(PI_LOG_ERROR); /* the decoder's warnings would only slow the fuzzer down */
        quiet = 1;
    }
    struct pi_ctl_msg m, again;
    enum pi_ctl_defect d;
    /* a copy of exactly size bytes, so ASan sees any read past the frame */
    uint8_t *frame = malloc(size ? size : 1);
    if (!frame) return 0;
    if (size) memcpy(frame, data, size);
    int rc = pi_ctl_decode(frame, size, &m, &d);
    if ((rc == 0) != (d == PI_CTL_OK)) abort(); /* the defect agrees with the result */
    if (rc == 0) {
        uint8_t *buf;
        size_t len;
        if (pi_ctl_encode(&m, &buf, &len) != 0) abort(); /* what was accepted can be sent */
        const bool json = m.type == PI_CTL_LOAD || m.type == PI_CTL_STATUS_RESP;
        if (!json && (len != size || memcmp(buf, frame, size) != 0)) abort();
        if (pi_ctl_decode(buf, len, &again, &d) != 0 || again.type != m.type || again.request_id != m.request_id) abort();
        pi_ctl_msg_clear(&again);
        free(buf);
        pi_ctl_msg_clear(&m);
    }
    struct pi_ctl_framer f = {0};
    const size_t step = 1 + (size ? data[0] % 13 : 0);
    int msgs = 0, bad = 0;
    for (size_t pos = 0; pos < size && !bad;) {
        const uint8_t *p = frame + pos;
        size_t n = PI_MIN(step, size - pos);
        pos += n;
        while (n && !bad) {
            int r = pi_ctl_framer_feed(&f, &p, &n, NULL);
            if (pi_ctl_framer_held(&f) > PI_CTL_MAX_MSG) abort();
            bad = r < 0;
            if (r == 1) {
                struct pi_ctl_msg x;
                if (pi_ctl_framer_pop(&f, &x, NULL) == 0) pi_ctl_msg_clear(&x);
                msgs++;
            }
        }
    }
    if (rc == 0 && (bad || msgs != 1 || pi_ctl_framer_partial(&f))) abort();
    pi_ctl_framer_clear(&f);
    free(frame);
    return 0;
}
