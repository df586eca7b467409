#!/bin/sh
# Regenerate the build system (configure, Makefile.in, build-aux/) from configure.ac and Makefile.am.
set -e
cd "$(dirname "$0")"
autoreconf -fi
