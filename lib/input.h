/*
 * lib/input.h - reading a bounded text input (a prompt) from a file or standard input, for the
 * programs that take one (pi-coordinator --prompt-file, pi-ctl generate --prompt-file): a prompt given
 * on the command line is visible to every local user in ps(1), a file or a pipe is not.
 */
#ifndef PI_LIB_INPUT_H
#define PI_LIB_INPUT_H

#include <stddef.h>

/* The most bytes a prompt read by pi_input_read may have: the control protocol's message bound. */
#define PI_INPUT_MAX_PROMPT (1u << 20)

/* Read the whole of path ("-": standard input) into a new NUL-terminated string (*out, caller frees;
 * *len its length without the NUL, may be NULL), exactly as it is (no newline stripped). At most max
 * bytes are read before the input is refused, so a device or an endless pipe cannot grow memory.
 * Returns 0, or -PI_ERR_RANGE (longer than max), -PI_ERR_FORMAT (a NUL byte in it: the prompt is a C
 * string and the protocol's strings hold none), -PI_ERR_IO (open or read failed, a directory),
 * -PI_ERR_NOMEM; the reason, naming path, is written to err (err_len bytes), not logged: the caller
 * reports it as a usage error. */
int pi_input_read(const char *path, size_t max, char **out, size_t *len, char *err, size_t err_len);

#endif
