/* tests/unit/test-shm.c - memfd segments (ipc/shm.h): layout, seals against resizing, sharing with an
 * exec'd child by fd inheritance, and rejection of every kind of bad header when mapping. */
#include "config.h"
#include "ipc/shm.h"
#include "lib/common.h"
#include "lib/log.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* The child half of the inheritance test: map the fd named on the command line, check the
 * parent's pattern, write the answer into section 1. Exit status 0 = all good. */
static int child_main(const char *fd_arg)
{
    pi_shm_t *shm = NULL;
    uint64_t size;
    uint32_t *a, *b;
    int fd;
    if (pi_shm_parse_fd(fd_arg, &fd) < 0) return 10;
    if (pi_shm_map_fd(fd, PI_SHM_KIND_TEST, &shm) < 0) return 11;
    a = pi_shm_section(shm, 0, &size);
    b = pi_shm_section(shm, 1, NULL);
    if (!a || !b || size < 64 * sizeof *a) return 12;
    for (unsigned i = 0; i < 64; i++) {
        if (a[i] != i * 2654435761u) return 13;
        b[i] = a[i] ^ 0xffffffffu;
    }
    pi_shm_destroy(&shm);
    return 0;
}

/* Fork and exec ourselves as the child with `arg`; returns the child's exit status or -1. */
static int run_child(const char *arg)
{
    int st;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execl("/proc/self/exe", "test-shm", "--child", arg, (char *)NULL);
        _exit(99);
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

/* Map a dup of shm's fd; returns the pi_err (0 on success) and closes what it opened. */
static int try_map(const pi_shm_t *shm, uint32_t kind)
{
    pi_shm_t *m = NULL;
    int fd = dup(pi_shm_fd(shm));
    int rc = pi_shm_map_fd(fd, kind, &m);
    if (rc == 0) pi_shm_destroy(&m);
    else close(fd);
    return rc;
}

static void test_layout_and_seals(void)
{
    uint64_t sizes[3] = {100, 4096, 1}, sz;
    struct pi_shm_section sec[3];
    pi_shm_t *shm = pi_shm_new("test", PI_SHM_KIND_TEST, sizes, 3);
    int fd, seals;
    uint64_t total = pi_shm_layout(sizes, 3, sec);
    struct stat st;

    tap_ok(shm != NULL, "create a 3-section segment");
    if (!shm) return;
    fd = pi_shm_fd(shm);
    tap_is_int((long long)pi_shm_size(shm), (long long)total, "size is the layout's total");
    tap_ok(fstat(fd, &st) == 0 && (uint64_t)st.st_size == total, "the memfd has that size");
    for (unsigned i = 0; i < 3; i++) {
        uint8_t *p = pi_shm_section(shm, i, &sz);
        tap_ok(p && (uintptr_t)p % 64 == 0 && sz == sizes[i] &&
                   (uint64_t)(p - (uint8_t *)pi_shm_base(shm)) == sec[i].offset && sec[i].offset >= 192,
               "section %u: aligned, sized, after the header", i);
    }
    tap_ok(sec[1].offset >= sec[0].offset + sizes[0] && sec[2].offset >= sec[1].offset + sizes[1],
           "sections do not overlap");
    tap_ok(pi_shm_section(shm, 3, NULL) == NULL, "section index out of range gives NULL");
    seals = fcntl(fd, F_GET_SEALS);
    tap_ok(seals >= 0 && (seals & (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)) == (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL),
           "sealed: grow, shrink, seal");
    errno = 0;
    tap_ok(ftruncate(fd, (off_t)total * 2) != 0 && errno == EPERM, "growing the segment fails");
    errno = 0;
    tap_ok(ftruncate(fd, 64) != 0 && errno == EPERM, "shrinking the segment fails");
    tap_ok(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) != 0, "no further seals can be added (F_SEAL_SEAL)");
    tap_ok(fcntl(fd, F_GETFD) & FD_CLOEXEC, "fd is close-on-exec until shared");
    tap_ok(try_map(shm, PI_SHM_KIND_TEST) == 0, "a good segment maps");
    {
        /* Two mappings of one segment see each other's writes. */
        pi_shm_t *m = NULL;
        int fd2 = dup(fd);
        int rc = pi_shm_map_fd(fd2, PI_SHM_KIND_TEST, &m);
        uint32_t *a = pi_shm_section(shm, 1, NULL);
        a[7] = 0xdeadbeef;
        tap_ok(rc == 0 && ((uint32_t *)pi_shm_section(m, 1, NULL))[7] == 0xdeadbeef, "mappings share memory");
        if (rc == 0) pi_shm_destroy(&m);
        else close(fd2);
    }
    pi_shm_destroy(&shm);
    tap_ok(shm == NULL, "destroy nulls the pointer");
    pi_shm_destroy(&shm);
    pi_shm_destroy(NULL);
    {
        uint64_t many[PI_SHM_MAX_SECTIONS + 1] = {0};
        uint64_t huge[2] = {PI_SHM_MAX_SIZE, PI_SHM_MAX_SIZE};
        tap_ok(pi_shm_new("x", PI_SHM_KIND_TEST, many, PI_SHM_MAX_SECTIONS + 1) == NULL, "too many sections rejected");
        tap_ok(pi_shm_new("x", PI_SHM_KIND_TEST, huge, 2) == NULL, "oversized layout rejected");
    }
}

static void test_inherit(void)
{
    uint64_t sizes[2] = {64 * 4, 64 * 4};
    pi_shm_t *shm = pi_shm_new("inherit", PI_SHM_KIND_TEST, sizes, 2);
    char arg[32];
    uint32_t *a, *b;
    int ok = 1, fd;
    if (!shm) {
        tap_ok(0, "create for inheritance");
        return;
    }
    a = pi_shm_section(shm, 0, NULL);
    b = pi_shm_section(shm, 1, NULL);
    for (unsigned i = 0; i < 64; i++) a[i] = i * 2654435761u;
    snprintf(arg, sizeof arg, "%d", pi_shm_fd(shm));
    tap_ok(run_child(arg) == 10, "without pi_shm_share_fd the fd does not survive exec");
    fd = pi_shm_share_fd(shm);
    tap_ok(fd == pi_shm_fd(shm) && !(fcntl(fd, F_GETFD) & FD_CLOEXEC), "share_fd clears close-on-exec");
    tap_is_int(run_child(arg), 0, "exec'd child maps the inherited fd and checks the pattern");
    for (unsigned i = 0; i < 64; i++) ok &= b[i] == (a[i] ^ 0xffffffffu);
    tap_ok(ok, "the child's writes are visible to the parent");
    pi_shm_destroy(&shm);
}

/* Corrupt one header field, check the mapping is refused with `want`, restore. */
static void expect_reject(pi_shm_t *shm, void *field, size_t n, const void *bad, int want, const char *what)
{
    uint8_t save[16];
    PI_ASSERT(n <= sizeof save);
    memcpy(save, field, n);
    memcpy(field, bad, n);
    tap_is_int(try_map(shm, PI_SHM_KIND_TEST), want, what);
    memcpy(field, save, n);
}

static void test_bad_headers(void)
{
    uint64_t sizes[2] = {1000, 1000};
    pi_shm_t *shm = pi_shm_new("bad", PI_SHM_KIND_TEST, sizes, 2);
    struct pi_shm_header *h;
    uint32_t u32;
    uint64_t u64;
    if (!shm) {
        tap_ok(0, "create for corruption");
        return;
    }
    h = pi_shm_base(shm);
    u32 = 0x12345678;
    expect_reject(shm, &h->magic, 4, &u32, -PI_ERR_FORMAT, "bad magic rejected");
    u32 = PI_SHM_VERSION + 1;
    expect_reject(shm, &h->version, 4, &u32, -PI_ERR_UNSUPPORTED, "other version rejected");
    u64 = h->total_size + 64;
    expect_reject(shm, &h->total_size, 8, &u64, -PI_ERR_RANGE, "total size larger than the file rejected");
    u64 = h->total_size - 64;
    expect_reject(shm, &h->total_size, 8, &u64, -PI_ERR_RANGE, "total size smaller than the file rejected");
    u32 = PI_SHM_KIND_EXCHANGE;
    expect_reject(shm, &h->kind, 4, &u32, -PI_ERR_FORMAT, "wrong kind rejected");
    u32 = PI_SHM_MAX_SECTIONS + 1;
    expect_reject(shm, &h->n_sections, 4, &u32, -PI_ERR_FORMAT, "too many sections rejected");
    u64 = h->total_size - 8;
    expect_reject(shm, &h->sections[1].offset, 8, &u64, -PI_ERR_RANGE, "section past the end rejected");
    u64 = UINT64_MAX - 10;
    expect_reject(shm, &h->sections[1].size, 8, &u64, -PI_ERR_RANGE, "section size overflowing rejected");
    u64 = 64;
    expect_reject(shm, &h->sections[0].offset, 8, &u64, -PI_ERR_RANGE, "section over the header rejected");
    u64 = h->sections[1].offset + 8;
    expect_reject(shm, &h->sections[1].offset, 8, &u64, -PI_ERR_RANGE, "misaligned section rejected");
    u64 = h->sections[0].offset;
    expect_reject(shm, &h->sections[1].offset, 8, &u64, -PI_ERR_RANGE, "overlapping sections rejected");
    tap_is_int(try_map(shm, PI_SHM_KIND_TEST), 0, "restored header maps again");
    pi_shm_destroy(&shm);

    {
        /* A file with a good header but no seals: a peer could shrink it under us. */
        struct pi_shm_header hd = {.magic = PI_SHM_MAGIC, .version = PI_SHM_VERSION, .total_size = 4096,
                                   .kind = PI_SHM_KIND_TEST};
        pi_shm_t *m = NULL;
        int fd = memfd_create("unsealed", MFD_CLOEXEC);
        int ok = fd >= 0 && ftruncate(fd, 4096) == 0 && pwrite(fd, &hd, sizeof hd, 0) == (ssize_t)sizeof hd;
        tap_ok(ok && pi_shm_map_fd(fd, PI_SHM_KIND_TEST, &m) == -PI_ERR_FORMAT, "unsealed segment rejected");
        tap_ok(fd >= 0 && fcntl(fd, F_GETFD) >= 0, "on failure the caller still owns the fd");
        if (fd >= 0) close(fd);
        /* Sealed against resizing but not against further seals: the holder could still shrink and
         * seal it between our size check and the mapping (the seals are checked before the size). */
        fd = memfd_create("resizable", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ok = fd >= 0 && ftruncate(fd, 4096) == 0 && pwrite(fd, &hd, sizeof hd, 0) == (ssize_t)sizeof hd &&
             fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) == 0;
        tap_ok(ok && pi_shm_map_fd(fd, PI_SHM_KIND_TEST, &m) == -PI_ERR_FORMAT, "a segment without F_SEAL_SEAL rejected");
        if (fd >= 0) close(fd);
        fd = memfd_create("tiny", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ok = fd >= 0 && ftruncate(fd, 100) == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) == 0;
        tap_ok(ok && pi_shm_map_fd(fd, PI_SHM_KIND_TEST, &m) == -PI_ERR_RANGE, "file smaller than a header rejected");
        if (fd >= 0) close(fd);
    }
}

static void test_parse_fd(void)
{
    int fd = -1;
    tap_ok(pi_shm_parse_fd("abc", &fd) == -PI_ERR_INVAL, "parse_fd rejects text");
    tap_ok(pi_shm_parse_fd("-1", &fd) == -PI_ERR_INVAL, "parse_fd rejects negatives");
    tap_ok(pi_shm_parse_fd("2x", &fd) == -PI_ERR_INVAL, "parse_fd rejects trailing junk");
    tap_ok(pi_shm_parse_fd("99999999999", &fd) == -PI_ERR_INVAL, "parse_fd rejects overflow");
    tap_ok(pi_shm_parse_fd("1000000", &fd) == -PI_ERR_INVAL, "parse_fd rejects a closed fd");
    tap_ok(pi_shm_parse_fd("1", &fd) == 0 && fd == 1, "parse_fd accepts an open fd");
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--child") == 0) {
        pi_log_set_level(PI_LOG_ERROR);
        return child_main(argv[2]);
    }
    alarm(20); /* a hang is a failure, never a stuck CI job */
    pi_log_set_program("test-shm");
    test_layout_and_seals();
    test_inherit();
    test_bad_headers();
    test_parse_fd();
    return tap_done();
}
