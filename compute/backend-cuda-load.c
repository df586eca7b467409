/*
 * compute/backend-cuda-load.c - finding and opening the cuda backend's module, pinfer-cuda.so
 * (compute/backend-cuda-module.h). In libpinfer.a in every build; without CUDA it only says so.
 *
 * Search order, first match wins, nothing else consulted (no environment variable, no
 * LD_LIBRARY_PATH search: dlopen always gets an absolute path):
 *   1. the build tree the program runs from: DIR/../compute/pinfer-cuda.so, then
 *      DIR/../../compute/pinfer-cuda.so, where DIR is the directory of the program's own file
 *      (/proc/self/exe). Programs sit one or two levels below the top of a build tree
 *      (gpu-worker/pi-gpu-worker, tests/cuda/test-backend-cuda) and the module in its compute/, so a
 *      program run from a build tree, or from a copy of one staged for the GPU machine
 *      (tools/gpu-check.sh), loads the module built with it, never an older installed one. Such a
 *      file, and its directory, must be owned by this user or root and writable by no one else:
 *      for a program in a shared directory (/tmp/x/pi-gpu-worker) those candidates are places
 *      others could write, and a module there that fails the check is an error, not loaded;
 *   2. the installed module, PI_CUDA_MODULE_DIR/pinfer-cuda.so (PI_CUDA_MODULE_DIR = $(pkglibdir)).
 * A candidate that does not exist is passed over; the first that exists is the one loaded, and a
 * failure to load it is the error (its path and dlerror() in the message), not a reason to try the
 * next. The module is loaded once (pthread_once), RTLD_NOW so that a missing symbol is an error now
 * rather than a crash later, and never unloaded (CUDA's libraries do not support being unloaded).
 */
#include "config.h"
#include "compute/backend-cuda-module.h"
#include "lib/common.h"
#include "lib/log.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef PI_HAVE_CUDA
#include <dlfcn.h>
#include <libgen.h>
#include <pthread.h>

#ifndef PI_CUDA_MODULE_DIR
#error "PI_CUDA_MODULE_DIR (where make install puts pinfer-cuda.so) is set by the Makefile"
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const struct pi_backend_cuda_module *module;
static char failure[PATH_MAX + 512]; /* why it could not be loaded, logged at every call */

/* True when path may be trusted as code: owned by us or root, writable by no one else. */
static bool trusted(const struct stat *st)
{
    return (st->st_uid == geteuid() || st->st_uid == 0) && !(st->st_mode & 022);
}

/* The module's path into out: the first candidate of the search order that exists. False, with the
 * reason in why, when a build-tree candidate exists but may not be trusted. */
static bool find_module(char *out, size_t len, char *why, size_t why_len)
{
    char exe[PATH_MAX], dir[PATH_MAX];
    struct stat st, dst;
    if (realpath("/proc/self/exe", exe)) {
        snprintf(dir, sizeof dir, "%s", dirname(exe));
        static const char *const up[] = {"..", "../.."};
        for (size_t i = 0; i < PI_ARRAY_LEN(up); i++) {
            if ((size_t)snprintf(out, len, "%s/%s/compute", dir, up[i]) >= len) continue;
            const bool have_dir = stat(out, &dst) == 0;
            if ((size_t)snprintf(out, len, "%s/%s/compute/%s", dir, up[i], PI_BACKEND_CUDA_MODULE_FILE) >= len ||
                !have_dir || stat(out, &st) != 0)
                continue;
            if (S_ISREG(st.st_mode) && trusted(&st) && trusted(&dst)) return true;
            snprintf(why, why_len,
                     "backend cuda: refusing the module %s: it, or its directory, is not owned by this user or root, "
                     "or others may write it",
                     out);
            return false;
        }
    }
    snprintf(out, len, "%s/%s", PI_CUDA_MODULE_DIR, PI_BACKEND_CUDA_MODULE_FILE);
    return true;
}

void pi_backend_cuda_module_path(char *out, size_t len)
{
    char why[PATH_MAX + 256];
    if (!find_module(out, len, why, sizeof why)) snprintf(out, len, "(%s)", why);
}

/* The module's struct checked against this program's view of the boundary. */
static bool compatible(const struct pi_backend_cuda_module *mod, const char *path)
{
    if (mod->abi == PI_BACKEND_CUDA_ABI && mod->size_opts == sizeof(struct pi_backend_opts) &&
        mod->size_ops == sizeof(struct pi_backend_ops) && mod->size_model == sizeof(struct pi_model) &&
        mod->size_layer == sizeof(struct pi_layer) && mod->size_ptrain_samples == sizeof(struct pi_ptrain_samples) &&
        mod->size_ptrain_engine == sizeof(struct pi_ptrain_engine) && mod->backend_new && mod->usage && mod->mem_info &&
        mod->ptrain_new)
        return true;
    snprintf(failure, sizeof failure,
             "backend cuda: the module %s is from another build (pinfer %s, module ABI %u; this program: pinfer "
             "%s, ABI %d): install the module of this build",
             path, mod->version ? mod->version : "?", mod->abi, PACKAGE_VERSION, PI_BACKEND_CUDA_ABI);
    return false;
}

static void load_once(void)
{
    char path[PATH_MAX];
    if (!find_module(path, sizeof path, failure, sizeof failure)) return;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(failure, sizeof failure,
                 "backend cuda: cannot load the CUDA backend module %s: %s (a program run from a build tree looks "
                 "in its compute/ first)",
                 path, e ? e : "unknown error");
        return;
    }
    const struct pi_backend_cuda_module *mod = dlsym(h, PI_BACKEND_CUDA_MODULE_SYM);
    if (!mod) {
        const char *e = dlerror();
        snprintf(failure, sizeof failure, "backend cuda: %s has no %s: %s", path, PI_BACKEND_CUDA_MODULE_SYM,
                 e ? e : "unknown error");
        dlclose(h); /* nothing of it ran */
        return;
    }
    if (!compatible(mod, path)) return; /* left mapped: its constructors (CUDA's) have run */
    pi_debug("backend cuda: loaded %s", path);
    module = mod;
}

const struct pi_backend_cuda_module *pi_backend_cuda_try_load(char *why, size_t why_len)
{
    pthread_once(&once, load_once);
    if (!module) snprintf(why, why_len, "%s", failure);
    return module;
}

const struct pi_backend_cuda_module *pi_backend_cuda_load(void)
{
    pthread_once(&once, load_once);
    if (!module) pi_error("%s", failure);
    return module;
}

#else /* !PI_HAVE_CUDA */

void pi_backend_cuda_module_path(char *out, size_t len) { snprintf(out, len, "(none: built without CUDA)"); }

const struct pi_backend_cuda_module *pi_backend_cuda_try_load(char *why, size_t why_len)
{
    snprintf(why, why_len, "this build has no CUDA (configure found no nvcc and cuBLAS)");
    return NULL;
}

const struct pi_backend_cuda_module *pi_backend_cuda_load(void)
{
    pi_error("backend cuda: this pi-gpu-worker was built without the CUDA backend; use --backend host "
             "(or --gpu-backend host / none for pi-coordinator)");
    return NULL;
}

#endif
