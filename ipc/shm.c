/*
 * ipc/shm.c - memfd segments: create, seal, map, validate (see ipc/shm.h for why memfd and seals).
 *
 * DESIGN: the creator writes the whole header before the fd reaches any other process (fork/exec
 * is the synchronisation point), and nobody writes the header afterwards. A mapper therefore reads
 * it once, validates it against fstat and keeps a private copy of the section table; later reads of
 * the shared header are never trusted again.
 */
#include "config.h"

#include "ipc/shm.h"

#include "lib/common.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct pi_shm {
    int fd;
    void *base;
    uint64_t size;
    unsigned n_sections;
    struct pi_shm_section sections[PI_SHM_MAX_SECTIONS]; /* private, validated copy */
};

#define PI_SHM_SEALS (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)

uint64_t pi_shm_layout(const uint64_t *sizes, unsigned n, struct pi_shm_section *out)
{
    uint64_t off = sizeof(struct pi_shm_header);
    if (n > PI_SHM_MAX_SECTIONS) return 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t sz;
        if (sizes[i] > PI_SHM_MAX_SIZE) return 0;
        sz = pi_align_up(sizes[i], PI_SHM_ALIGN);
        out[i].offset = off;
        out[i].size = sizes[i];
        if (pi_add_overflows(off, sz, &off) || off > PI_SHM_MAX_SIZE) return 0;
    }
    return off;
}

pi_shm_t *pi_shm_new(const char *name, uint32_t kind, const uint64_t *section_sizes, unsigned n)
{
    struct pi_shm_header hdr;
    pi_shm_t *shm;
    uint64_t total;

    if (n > PI_SHM_MAX_SECTIONS || (n > 0 && !section_sizes)) {
        pi_error("pi_shm_new(%s): %u sections (at most %u)", name, n, PI_SHM_MAX_SECTIONS);
        return NULL;
    }
    memset(&hdr, 0, sizeof hdr);
    total = pi_shm_layout(section_sizes, n, hdr.sections);
    if (total == 0 || total > (uint64_t)SSIZE_MAX) {
        pi_error("pi_shm_new(%s): section sizes overflow the %llu-byte limit", name,
                 (unsigned long long)PI_SHM_MAX_SIZE);
        return NULL;
    }
    hdr.magic = PI_SHM_MAGIC;
    hdr.version = PI_SHM_VERSION;
    hdr.total_size = total;
    hdr.kind = kind;
    hdr.n_sections = n;

    shm = calloc(1, sizeof *shm);
    if (!shm) return NULL;
    shm->base = MAP_FAILED;
    /* CLOEXEC: only the workers the coordinator passes it to (pi_super_spawn's keep list) inherit it. */
    shm->fd = memfd_create(name ? name : "pinfer", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    if (shm->fd < 0) {
        pi_error("memfd_create(%s) failed: %s", name, strerror(errno));
        goto err;
    }
    if (ftruncate(shm->fd, (off_t)total) != 0) {
        pi_error("ftruncate(memfd:%s, %llu) failed: %s", name, (unsigned long long)total, strerror(errno));
        goto err;
    }
    /* Seal after sizing and before anyone else can see the fd: from here the size is final. */
    if (fcntl(shm->fd, F_ADD_SEALS, PI_SHM_SEALS) != 0) {
        pi_error("fcntl(memfd:%s, F_ADD_SEALS) failed: %s", name, strerror(errno));
        goto err;
    }
    shm->base = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, shm->fd, 0);
    if (shm->base == MAP_FAILED) {
        pi_error("mmap(memfd:%s, %llu) failed: %s", name, (unsigned long long)total, strerror(errno));
        goto err;
    }
    /* A fresh memfd reads as zeros; only the header needs writing. */
    memcpy(shm->base, &hdr, sizeof hdr);
    shm->size = total;
    shm->n_sections = n;
    memcpy(shm->sections, hdr.sections, sizeof shm->sections);
    return shm;
err:
    pi_shm_destroy(&shm);
    return NULL;
}

/* Check a header copy against the real file size; returns 0 or a logged -PI_ERR_*. */
static int check_header(const struct pi_shm_header *h, uint64_t file_size, uint32_t want_kind, int fd)
{
    uint64_t prev_end = sizeof *h;
    if (h->magic != PI_SHM_MAGIC) {
        pi_error("shm fd %d: bad magic 0x%08x (want 0x%08x)", fd, h->magic, PI_SHM_MAGIC);
        return -PI_ERR_FORMAT;
    }
    if (h->version != PI_SHM_VERSION) {
        pi_error("shm fd %d: version %u, this build speaks %u", fd, h->version, PI_SHM_VERSION);
        return -PI_ERR_UNSUPPORTED;
    }
    if (h->total_size != file_size) {
        pi_error("shm fd %d: header says %llu bytes, file has %llu", fd, (unsigned long long)h->total_size,
                 (unsigned long long)file_size);
        return -PI_ERR_RANGE;
    }
    if (h->kind != want_kind) {
        pi_error("shm fd %d: segment kind %u, expected %u", fd, h->kind, want_kind);
        return -PI_ERR_FORMAT;
    }
    if (h->n_sections > PI_SHM_MAX_SECTIONS) {
        pi_error("shm fd %d: %u sections (at most %u)", fd, h->n_sections, PI_SHM_MAX_SECTIONS);
        return -PI_ERR_FORMAT;
    }
    /* Sections must come in order, aligned, after the header, inside the file: then they neither
     * overlap each other nor the header. */
    for (unsigned i = 0; i < h->n_sections; i++) {
        uint64_t off = h->sections[i].offset, sz = h->sections[i].size, end;
        if (off % PI_SHM_ALIGN != 0 || off < prev_end || pi_add_overflows(off, sz, &end) || end > file_size) {
            pi_error("shm fd %d: section %u [%llu, +%llu) outside the %llu-byte segment or misplaced", fd, i,
                     (unsigned long long)off, (unsigned long long)sz, (unsigned long long)file_size);
            return -PI_ERR_RANGE;
        }
        prev_end = end;
    }
    return 0;
}

int pi_shm_map_fd(int fd, uint32_t want_kind, pi_shm_t **out)
{
    struct pi_shm_header hdr;
    struct stat st;
    pi_shm_t *shm;
    int seals, rc;

    *out = NULL;
    /* The seals first, then the size: with all three seals (F_SEAL_SEAL included, so no further seal
     * can change what the file may do) the size read next can no longer change. Checked the other way
     * round, whoever held the fd could shrink and seal it between the two, and the mapping would run
     * past the end of the file (SIGBUS on the first touch of a later section). */
    seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & PI_SHM_SEALS) != PI_SHM_SEALS) {
        pi_error("shm fd %d: not sealed against resizing (seals %d, want grow, shrink and seal)", fd, seals);
        return -PI_ERR_FORMAT;
    }
    if (fstat(fd, &st) != 0) {
        pi_error("fstat(shm fd %d) failed: %s", fd, strerror(errno));
        return -PI_ERR_IO;
    }
    /* The file's real size bounds everything below; the header's claims are checked against it. */
    if (st.st_size < (off_t)sizeof hdr || (uint64_t)st.st_size > PI_SHM_MAX_SIZE) {
        pi_error("shm fd %d: size %lld outside [%zu, %llu]", fd, (long long)st.st_size, sizeof hdr,
                 (unsigned long long)PI_SHM_MAX_SIZE);
        return -PI_ERR_RANGE;
    }
    shm = calloc(1, sizeof *shm);
    if (!shm) return -PI_ERR_NOMEM;
    /* Map the whole file read-write: every segment kind has words each side writes. */
    shm->fd = fd;
    shm->size = (uint64_t)st.st_size;
    shm->base = mmap(NULL, (size_t)shm->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shm->base == MAP_FAILED) {
        pi_error("mmap(shm fd %d, %llu) failed: %s", fd, (unsigned long long)shm->size, strerror(errno));
        rc = -PI_ERR_IO;
        goto err;
    }
    memcpy(&hdr, shm->base, sizeof hdr); /* one snapshot: validate and use the same bytes */
    rc = check_header(&hdr, shm->size, want_kind, fd);
    if (rc < 0) goto err;
    shm->n_sections = hdr.n_sections;
    memcpy(shm->sections, hdr.sections, sizeof shm->sections);
    *out = shm;
    return 0;
err:
    shm->fd = -1; /* on failure the caller keeps its fd */
    pi_shm_destroy(&shm);
    return rc;
}

void pi_shm_destroy(pi_shm_t **p)
{
    pi_shm_t *shm = p ? *p : NULL;
    if (!shm) return;
    if (shm->base != MAP_FAILED && shm->base) munmap(shm->base, (size_t)shm->size);
    if (shm->fd >= 0) close(shm->fd);
    free(shm);
    *p = NULL;
}

void pi_shm_unmap_keep_fd(pi_shm_t **p)
{
    if (p && *p) (*p)->fd = -1;
    pi_shm_destroy(p);
}

int pi_shm_share_fd(const pi_shm_t *shm)
{
    int flags = fcntl(shm->fd, F_GETFD);
    if (flags < 0 || fcntl(shm->fd, F_SETFD, flags & ~FD_CLOEXEC) != 0) {
        pi_error("fcntl(shm fd %d, F_SETFD) failed: %s", shm->fd, strerror(errno));
        return -PI_ERR_IO;
    }
    return shm->fd;
}

int pi_shm_parse_fd(const char *s, int *fd)
{
    /* Strict: a typo on a worker's command line must fail here, not map some other open file
     * (pi_shm_map_fd would still reject it, but with a less obvious message). */
    char *end;
    long v;
    if (!s || *s < '0' || *s > '9') goto bad;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > INT_MAX) goto bad;
    if (fcntl((int)v, F_GETFD) < 0) {
        pi_error("shm fd %ld from the command line is not open: %s", v, strerror(errno));
        return -PI_ERR_INVAL;
    }
    *fd = (int)v;
    return 0;
bad:
    pi_error("shm fd \"%s\" from the command line is not a number in [0, %d]", s ? s : "(null)", INT_MAX);
    return -PI_ERR_INVAL;
}

int pi_shm_fd(const pi_shm_t *shm) { return shm->fd; }
void *pi_shm_base(const pi_shm_t *shm) { return shm->base; }
uint64_t pi_shm_size(const pi_shm_t *shm) { return shm->size; }
unsigned pi_shm_n_sections(const pi_shm_t *shm) { return shm->n_sections; }

void *pi_shm_section(const pi_shm_t *shm, unsigned idx, uint64_t *size)
{
    if (idx >= shm->n_sections) return NULL;
    if (size) *size = shm->sections[idx].size;
    return (uint8_t *)shm->base + shm->sections[idx].offset;
}
