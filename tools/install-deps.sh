#!/bin/bash
# tools/install-deps.sh - installs what building pinfer needs on Debian 12, as root: the compiler,
# Autotools, pkg-config, mandoc (make check lints the man pages), Node.js and npm (the HTTP API's
# test uses OpenAI's npm client), curl (the demo) and the -dev packages of every library
# configure requires. Each is checked first and only missing packages are installed. Used by
# tools/test.sh and tools/demo.sh.
# Exits 0 when everything is there, non-zero with one line on stderr otherwise.
#
# PI_DEPS_CUDA=1 (.ci/run sets it) then also installs Debian's CUDA toolkit (nvidia-cuda-toolkit, CUDA
# 11.8, from the non-free component: about 1.6 GB to download, 5.5 GB installed) and clang-14 as its
# host compiler when no nvcc is there, so that configure compiles the CUDA backend on a machine
# without a GPU (its tests then skip). It runs after the required packages, and a failure there (no
# room, no network) is reported and does not fail the script: the build goes on without CUDA.
set -u
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v autoreconf >/dev/null || need+=(autoconf)
command -v automake >/dev/null || need+=(automake)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v mandoc >/dev/null || need+=(mandoc) # tests/integration/test-man.sh lints the man pages
command -v node >/dev/null || need+=(nodejs) # tests/integration/test-http.sh drives the HTTP API with OpenAI's npm client
command -v npm >/dev/null || need+=(npm)
command -v curl >/dev/null || need+=(curl) # tools/demo.sh asks the HTTP API
for pair in zmq.h:libzmq3-dev hwloc.h:libhwloc-dev numa.h:libnuma-dev jansson.h:libjansson-dev \
            ini.h:libinih-dev microhttpd.h:libmicrohttpd-dev; do
    [ -e "/usr/include/${pair%%:*}" ] || need+=("${pair#*:}")
done
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ]; then
    printf '== installing: %s\n' "${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "tools/install-deps.sh: missing packages ${need[*]}; run as root or install them" >&2
        exit 2
    fi
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || { echo "tools/install-deps.sh: apt-get install ${need[*]} failed" >&2; exit 2; }
fi

# ---- optional: Debian's CUDA toolkit (PI_DEPS_CUDA=1)
cuda_skip() { echo "== CUDA toolkit: $1 (the CUDA backend is not compiled)" >&2; exit 0; }
[ "${PI_DEPS_CUDA:-0}" = 1 ] || exit 0
{ command -v nvcc || [ -x /usr/local/cuda/bin/nvcc ]; } >/dev/null 2>&1 && exit 0
[ "$(id -u)" -eq 0 ] || cuda_skip "not root, not installed"
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
[ "$codename" = bookworm ] || cuda_skip "not Debian 12 (${codename:-unknown}), not installed"
avail_kb=$(df --output=avail -k / 2>/dev/null | tail -1)
[ "${avail_kb:-0}" -ge $((8 * 1024 * 1024)) ] || cuda_skip "less than 8 GiB free on /, not installed"
echo "== installing Debian's CUDA toolkit (nvidia-cuda-toolkit, non-free) and clang-14" >&2
src=/etc/apt/sources.list.d/pinfer-non-free.sources
[ -f $src ] || printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: non-free contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $src
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit clang-14 >/dev/null; }; then
    apt-get install -y -qq -f >/dev/null 2>&1 # leave dpkg consistent for whatever runs next
    apt-get clean
    cuda_skip "apt-get install failed"
fi
apt-get clean # the downloaded packages
exit 0
