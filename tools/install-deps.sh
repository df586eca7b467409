#!/bin/bash
# tools/install-deps.sh - installs what building pinfer needs on Debian 12, as root: the compiler,
# Autotools, pkg-config and the -dev packages of every library configure requires. Each is checked
# first and only missing packages are installed. Used by tools/test.sh and tools/demo.sh.
# Exits 0 when everything is there, non-zero with one line on stderr otherwise.
set -u
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
