/*
 * ipc/shm.h - shared-memory segments between pinfer's processes: anonymous memfd files, sized once,
 * sealed against resizing, mapped MAP_SHARED by the coordinator and every worker.
 *
 * Why memfd and not shm_open: a memfd has no name in /dev/shm, so a process that crashes (or is
 * killed with SIGKILL) leaks nothing; the segment lives exactly as long as some process holds its fd
 * or a mapping. The coordinator creates a segment (close-on-exec), has FD_CLOEXEC cleared on the fds
 * a worker uses in that worker's child process only (coordinator/supervisor.c, pi_super_spawn), and
 * passes the fd numbers on the worker's command line; the worker maps them with pi_shm_map_fd, which
 * trusts nothing in the segment until it has been checked. (pi_shm_share_fd clears the flag in the
 * calling process instead, for a program that execs a single child.)
 *
 * Why seals: F_SEAL_GROW|F_SEAL_SHRINK pin the size, so no peer can ftruncate the file under a
 * mapping (a shrink would turn our loads into SIGBUS); F_SEAL_SEAL stops anyone from undoing that.
 *
 * Every segment starts with struct pi_shm_header: magic, version, total size, a kind (what the
 * segment is for) and a table of up to PI_SHM_MAX_SECTIONS sections (offset, size). The mapper checks
 * the table against the real file size once and keeps a private copy, so a peer that later scribbles
 * over the header cannot redirect our accesses out of bounds.
 */
#ifndef PI_IPC_SHM_H
#define PI_IPC_SHM_H

#include <stddef.h>
#include <stdint.h>

#define PI_SHM_MAGIC 0x4d485350u /* "PSHM" read as little-endian bytes */
#define PI_SHM_VERSION 1u
#define PI_SHM_MAX_SECTIONS 8u
#define PI_SHM_ALIGN 64u /* every section starts on its own cache line */
/* Upper bound on a segment; anything larger read from a header is corruption, not a request. */
#define PI_SHM_MAX_SIZE (UINT64_C(1) << 40)

/* Segment kinds (pi_shm_header.kind). */
enum pi_shm_kind {
    PI_SHM_KIND_TEST = 1,     /* tests and benchmarks */
    PI_SHM_KIND_EXCHANGE = 2, /* per-layer exchange (ipc/exchange.h) */
    PI_SHM_KIND_PLACEMENT = 3, /* the placement map's wire form, one section (compute/placement.h) */
};

/* One entry of the section table; offsets are from the start of the segment. */
struct pi_shm_section {
    uint64_t offset;
    uint64_t size;
};

/* The first bytes of every segment. Written once by the creator before any peer maps it, then read
 * only; fixed-width fields, little-endian (all our processes run on one host). */
struct pi_shm_header {
    uint32_t magic;      /* PI_SHM_MAGIC */
    uint32_t version;    /* PI_SHM_VERSION */
    uint64_t total_size; /* bytes of the file, equal to fstat's st_size */
    uint32_t kind;       /* enum pi_shm_kind */
    uint32_t n_sections; /* <= PI_SHM_MAX_SECTIONS */
    uint64_t reserved;   /* zero */
    struct pi_shm_section sections[PI_SHM_MAX_SECTIONS];
    uint8_t pad[32];     /* to a whole number of cache lines */
};
_Static_assert(sizeof(struct pi_shm_header) == 192, "pi_shm_header is pinned: 3 cache lines");
_Static_assert(offsetof(struct pi_shm_header, sections) == 32, "section table at byte 32");

typedef struct pi_shm pi_shm_t;

/* Where pi_shm_new puts n sections of the given sizes: fills out[0..n) (offset, size) and returns
 * the segment's total size, or 0 when n > PI_SHM_MAX_SECTIONS or the sum overflows / exceeds
 * PI_SHM_MAX_SIZE. Lets a layer above (ipc/exchange.c) recompute and compare a mapped layout. */
uint64_t pi_shm_layout(const uint64_t *section_sizes, unsigned n, struct pi_shm_section *out);

/* Create a sealed memfd segment of kind `kind` with n sections of the given sizes (each rounded up
 * to PI_SHM_ALIGN and laid out in order after the header), map it shared, zero it and write the
 * header. `name` shows in /proc/PID/fd (memfd:NAME) for debugging. The fd is close-on-exec (see the
 * header comment for how a worker inherits it). Returns the handle, or NULL (logged) on failure or
 * n > PI_SHM_MAX_SECTIONS. */
pi_shm_t *pi_shm_new(const char *name, uint32_t kind, const uint64_t *section_sizes, unsigned n);

/* Map an inherited segment fd. On success the handle owns fd (pi_shm_destroy closes it); on failure
 * the caller still owns it. Checks, in this order: all three seals (grow, shrink, seal: with them the
 * size can no longer change), the size from fstat (>= header, <= PI_SHM_MAX_SIZE), the header's
 * magic, version, total size (== st_size), kind (== want_kind),
 * section count, and that every section lies inside the file, aligned, without overlapping the
 * header or another section. Returns 0 and the handle, or -PI_ERR_FORMAT (bad header),
 * -PI_ERR_UNSUPPORTED (version), -PI_ERR_RANGE (sizes), -PI_ERR_IO (syscall), all logged. */
int pi_shm_map_fd(int fd, uint32_t want_kind, pi_shm_t **out);

/* Unmap and close; accepts NULL and *p == NULL; nulls the caller's pointer. The memory itself is
 * freed by the kernel once the last process unmaps/closes it. */
void pi_shm_destroy(pi_shm_t **p);

/* As pi_shm_destroy but leaves the fd open: for a caller whose own checks failed after a
 * successful pi_shm_map_fd and who must hand the fd back untouched. */
void pi_shm_unmap_keep_fd(pi_shm_t **p);

/* Clear FD_CLOEXEC on the segment's fd so an exec'd child inherits it; returns the fd number to
 * pass on its command line, or -PI_ERR_IO. Call in the child after fork (or in the parent, if
 * every exec is meant to inherit it). */
int pi_shm_share_fd(const pi_shm_t *shm);

/* Parse a decimal fd number from a command line ("7"); -PI_ERR_INVAL (logged) when not a plain
 * number in [0, INT_MAX] or when no such fd is open. */
int pi_shm_parse_fd(const char *s, int *fd);

/* The segment's fd (owned by the handle), the start of the mapping, its size in bytes (== the file
 * size, validated), and the number of sections in the validated table. */
int pi_shm_fd(const pi_shm_t *shm);
void *pi_shm_base(const pi_shm_t *shm);
uint64_t pi_shm_size(const pi_shm_t *shm);
unsigned pi_shm_n_sections(const pi_shm_t *shm);

/* Pointer to section idx and its size (from the validated private copy of the table), or NULL when
 * idx is out of range. */
void *pi_shm_section(const pi_shm_t *shm, unsigned idx, uint64_t *size);

#endif
