/*
 * tools/pi-gguf.c - print or check GGUF files.
 *
 *   pi-gguf FILE...          the header, every metadata key (arrays summarised) and the tensor table
 *   pi-gguf --check FILE...  validate only: "FILE: ok" on stdout for a good file, one line
 *                            "pi-gguf: FILE: <message>" on stderr for a bad one; the structure and
 *                            then every tensor's values (no NaN or infinity in an element or a block
 *                            scale: model/tensor-check.h, read in full)
 *
 * Everything it shows comes through model/gguf.h, which validates the whole file at open, so this
 * program inherits the reader's guarantee: no input makes it read outside the file. Strings from the
 * file are escaped before printing so that a file cannot write control sequences to the terminal.
 * Exit status: 0 when every file was good, 1 when any was not, 2 for a usage error.
 */
#include "config.h"
#include "lib/common.h"
#include "model/gguf.h"
#include "model/tensor-check.h"
#include "lib/log.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STR_SHOW 64 /* bytes of a string value shown before "..." */

static int arr_show = 4; /* array elements shown */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: pi-gguf [OPTION]... FILE...\n"
            "Print the metadata and tensor table of GGUF model files, or validate them.\n"
            "\n"
            "  -c, --check        validate only, the tensors' values too (no NaN or infinity);\n"
            "                     print \"FILE: ok\" for good files and one line\n"
            "                     \"pi-gguf: FILE: <reason>\" on stderr for each bad one\n"
            "  -n, --elements=N   array elements shown per key (default 4)\n"
            "  -h, --help         show this help and exit\n"
            "  -V, --version      show the version and exit\n"
            "\n"
            "Exit status: 0 if every file is a valid GGUF v2/v3 file, 1 if any is not, 2 on usage errors.\n");
}

/* Write s to buf quoted and escaped (printable ASCII as is, the rest as \xNN), at most max bytes of
 * s, then "..." when cut. buf holds at least 4 * max + 8 bytes. */
static const char *escape(char *buf, size_t len, struct pi_gguf_str s, uint64_t max)
{
    uint64_t n = PI_MIN(s.len, max);
    size_t k = 0;
    PI_ASSERT(len >= 4 * max + 8);
    buf[k++] = '"';
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\') k += (size_t)snprintf(buf + k, len - k, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f) buf[k++] = (char)c;
        else k += (size_t)snprintf(buf + k, len - k, "\\x%02x", c);
    }
    buf[k++] = '"';
    if (s.len > max) k += (size_t)snprintf(buf + k, len - k, "...");
    buf[k] = '\0';
    return buf;
}

static void put_escaped(struct pi_gguf_str s, uint64_t max)
{
    static char buf[4 * 1024 + 8];
    fputs(escape(buf, sizeof buf, s, PI_MIN(max, (uint64_t)1024)), stdout);
}

/* One fixed-size element of type t at p (unaligned). */
static void put_scalar(enum pi_gguf_vtype t, const uint8_t *p)
{
    switch (t) {
    case PI_GGUF_U8: printf("%u", p[0]); break;
    case PI_GGUF_I8: printf("%d", (int8_t)p[0]); break;
    case PI_GGUF_BOOL: printf("%s", p[0] ? "true" : "false"); break;
    case PI_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); printf("%u", v); break; }
    case PI_GGUF_I16: { int16_t v; memcpy(&v, p, 2); printf("%d", v); break; }
    case PI_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); printf("%" PRIu32, v); break; }
    case PI_GGUF_I32: { int32_t v; memcpy(&v, p, 4); printf("%" PRId32, v); break; }
    case PI_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); printf("%" PRIu64, v); break; }
    case PI_GGUF_I64: { int64_t v; memcpy(&v, p, 8); printf("%" PRId64, v); break; }
    case PI_GGUF_F32: { float v; memcpy(&v, p, 4); printf("%.9g", v); break; }
    case PI_GGUF_F64: { double v; memcpy(&v, p, 8); printf("%.17g", v); break; }
    default: printf("?"); break;
    }
}

static void put_array(const pi_gguf_t *g, uint64_t i)
{
    enum pi_gguf_vtype et;
    uint64_t n;
    if (pi_gguf_kv_arr(g, i, &et, &n) != 0) return;
    printf("array[%s] %" PRIu64 ":", pi_gguf_vtype_name(et), n);
    uint64_t show = PI_MIN(n, (uint64_t)arr_show);
    const uint8_t *data = pi_gguf_kv_arr_data(g, i);
    for (uint64_t j = 0; j < show; j++) {
        putchar(j ? ',' : ' ');
        if (j) putchar(' ');
        if (et == PI_GGUF_STRING) {
            struct pi_gguf_str s;
            if (pi_gguf_kv_arr_str(g, i, j, &s) == 0) put_escaped(s, STR_SHOW);
        } else {
            put_scalar(et, data + j * pi_gguf_vtype_size(et));
        }
    }
    if (n > show) printf(", ...");
}

static void print_kv(const pi_gguf_t *g, uint64_t i)
{
    enum pi_gguf_vtype t = pi_gguf_kv_type(g, i);
    struct pi_gguf_str s;
    printf("  ");
    put_escaped(pi_gguf_key(g, i), 256);
    printf(" = ");
    if (t == PI_GGUF_ARRAY) {
        put_array(g, i);
    } else if (t == PI_GGUF_STRING) {
        printf("string ");
        if (pi_gguf_kv_str(g, i, &s) == 0) put_escaped(s, STR_SHOW * 4);
    } else {
        /* The reader holds the value in the mapping; read it back through the typed getters. */
        uint64_t u;
        int64_t v;
        double d;
        bool b;
        printf("%s ", pi_gguf_vtype_name(t));
        if (t == PI_GGUF_BOOL && pi_gguf_kv_bool(g, i, &b) == 0) printf("%s", b ? "true" : "false");
        else if (pi_gguf_kv_f64(g, i, &d) == 0) printf(t == PI_GGUF_F32 ? "%.9g" : "%.17g", d);
        else if (pi_gguf_kv_uint(g, i, &u) == 0) printf("%" PRIu64, u);
        else if (pi_gguf_kv_int(g, i, &v) == 0) printf("%" PRId64, v);
    }
    putchar('\n');
}

static void print_tensors(const pi_gguf_t *g)
{
    uint64_t n = pi_gguf_n_tensors(g);
    printf("tensors: %" PRIu64 "\n", n);
    if (n == 0) return;
    printf("  %6s  %-40s %-5s %-28s %12s %12s\n", "#", "name", "type", "shape", "file offset", "bytes");
    for (uint64_t i = 0; i < n; i++) {
        const struct pi_gguf_tensor *t = pi_gguf_tensor(g, i);
        char shape[128];
        int k = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            k += snprintf(shape + k, sizeof shape - (size_t)k, "%s%" PRIu64, d ? " x " : "", t->ne[d]);
        char name[4 * 64 + 8];
        snprintf(shape + k, sizeof shape - (size_t)k, "]");
        printf("  %6" PRIu64 "  %-40s %-5s [%-27s %12" PRIu64 " %12" PRIu64 "\n", i,
               escape(name, sizeof name, t->name, 64), pi_type_name(t->type), shape,
               pi_gguf_data_offset(g) + t->offset, t->n_bytes);
    }
}

static void print_file(const char *path, const pi_gguf_t *g)
{
    printf("%s: GGUF v%u%s, %" PRIu64 " bytes, alignment %u, data section at %" PRIu64 "\n", path,
           pi_gguf_version(g), pi_gguf_flavour(g) == PI_GGUF_FLAVOUR_POWERINFER ? " (PowerInfer \"PWRI\")" : "",
           pi_gguf_file_size(g), pi_gguf_alignment(g), pi_gguf_data_offset(g));
    printf("metadata: %" PRIu64 " keys\n", pi_gguf_n_kv(g));
    for (uint64_t i = 0; i < pi_gguf_n_kv(g); i++) print_kv(g, i);
    print_tensors(g);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"check", no_argument, NULL, 'c'},   {"elements", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},    {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    bool check = false;
    int c, status = 0;
    pi_log_set_program("pi-gguf");
    while ((c = getopt_long(argc, argv, "cn:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c': check = true; break;
        case 'n': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 1000000) {
                fprintf(stderr, "pi-gguf: --elements wants a number 0..1000000, not '%s'\n", optarg);
                return 2;
            }
            arr_show = (int)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V': printf("pi-gguf (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "pi-gguf: no FILE given (try --help)\n");
        return 2;
    }
    for (int i = optind; i < argc; i++) {
        char err[512];
        pi_gguf_t *g = NULL;
        if (pi_gguf_open(argv[i], &g, err, sizeof err) != 0) {
            fflush(stdout);
            fprintf(stderr, "pi-gguf: %s: %s\n", argv[i], err);
            status = 1;
            continue;
        }
        if (check && pi_tensor_check_file(g, PI_TENSOR_CHECK_FULL, err, sizeof err) != 0) {
            fflush(stdout);
            fprintf(stderr, "pi-gguf: %s: %s\n", argv[i], err);
            status = 1;
        } else if (check) printf("%s: ok\n", argv[i]);
        else print_file(argv[i], g);
        if (!check && i + 1 < argc) putchar('\n');
        pi_gguf_destroy(&g);
    }
    return status;
}
