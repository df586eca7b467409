#!/bin/bash
# tools/install-deps.sh - installs what building pinfer needs on Debian 12, as root: the compiler,
# Autotools, pkg-config and the -dev packages of every library configure requires. Each is checked
# first and only missing packages are installed. Used by tools/test.sh and tools/demo.sh.
# Exits 0 when everything is there, non-zero with one line on stderr otherwise.
#
# PI_DEPS_CUDA=1 (.ci/run sets it) also installs Debian's CUDA toolkit (nvidia-cuda-toolkit, CUDA
# 11.8, from the non-free component, about 1.6 GB) and clang-14 as its host compiler when no nvcc is
# there, so that configure compiles the CUDA backend on a machine without a GPU (its tests then
# skip). A failure there is reported and does not fail the script: the build goes on without CUDA.
set -u
cuda_deps() {
    [ "${PI_DEPS_CUDA:-0}" = 1 ] || return 0
    { command -v nvcc || [ -x /usr/local/cuda/bin/nvcc ]; } >/dev/null 2>&1 && return 0
    [ "$(id -u)" -eq 0 ] || { echo "== CUDA toolkit: not root, not installed (the CUDA backend is not compiled)" >&2; return 0; }
    echo "== installing Debian's CUDA toolkit (nvidia-cuda-toolkit, non-free) and clang-14" >&2
    if [ ! -f /etc/apt/sources.list.d/pinfer-non-free.sources ]; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: non-free contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            > /etc/apt/sources.list.d/pinfer-non-free.sources
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit clang-14 >/dev/null \
        || echo "== CUDA toolkit: apt-get install failed (the CUDA backend is not compiled)" >&2
    apt-get clean # the 1.6 GB of downloaded packages
}
cuda_deps
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v autoreconf >/dev/null || need+=(autoconf)
command -v automake >/dev/null || need+=(automake)
command -v pkg-config >/dev/null || need+=(pkg-config)
for pair in zmq.h:libzmq3-dev hwloc.h:libhwloc-dev numa.h:libnuma-dev jansson.h:libjansson-dev \
            ini.h:libinih-dev microhttpd.h:libmicrohttpd-dev; do
    [ -e "/usr/include/${pair%%:*}" ] || need+=("${pair#*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
printf '== installing: %s\n' "${need[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "tools/install-deps.sh: missing packages ${need[*]}; run as root or install them" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { echo "tools/install-deps.sh: apt-get install ${need[*]} failed" >&2; exit 2; }
