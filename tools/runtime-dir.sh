#!/usr/bin/env bash
# Assembles the broker's runtime file set into a directory: the binary and
# the shared-library closure ldd reports for it, with the dynamic loader, and
# nothing else (no shell, no tools, no configuration). The Dockerfile uses it
# to fill the distroless image; tests/integration/test_deploy.py starts the
# broker from the directory with chroot to prove nothing else is needed.
#
#   tools/runtime-dir.sh [--without-glibc] BINARY DIR
#
# DIR must not exist or be empty. The binary lands at DIR/<its name>; each
# library at its canonical path (readlink -f of what ldd names) under the
# file name ldd names, so the loader's default search path finds it with no
# LD_LIBRARY_PATH and no ld.so.cache; the loader at the path in the binary's
# PT_INTERP. --without-glibc leaves out the files of Debian's libc6 package
# (libc, the loader, libresolv...): the distroless base images carry them.
# Prints the files it wrote, one per line, relative to DIR.
set -euo pipefail

usage() {
	echo "usage: $0 [--without-glibc] BINARY DIR" >&2
	exit 2
}

without_glibc=0
if [ "${1:-}" = "--without-glibc" ]; then
	without_glibc=1
	shift
fi
[ $# -eq 2 ] || usage
binary=$1
dir=$2

[ -f "$binary" ] && [ -x "$binary" ] || { echo "runtime-dir: no executable $binary" >&2; exit 1; }
if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
	echo "runtime-dir: $dir is not empty" >&2
	exit 1
fi
mkdir -p "$dir"

# True when the file at $1 (as ldd names it, or its canonical path) belongs
# to Debian's libc6 package. Merged /usr means dpkg may know either name.
from_libc6() {
	local owner
	owner=$(dpkg-query -S "$1" "$(readlink -f "$1")" 2>/dev/null | cut -d: -f1 | sort -u)
	[ "$owner" = "libc6" ]
}

place() { # place SOURCE DEST-RELATIVE MODE
	install -D -m "$3" -o 0 -g 0 "$(readlink -f "$1")" "$dir/$2"
	echo "$2"
}

if [ $without_glibc -eq 1 ] && ! command -v dpkg-query >/dev/null; then
	echo "runtime-dir: --without-glibc needs dpkg-query (a Debian build stage)" >&2
	exit 1
fi

# ldd prints "name => /path (0x...)" for libraries, "/path (0x...)" for the
# loader and "name => not found" for a library it cannot find.
listing=$(ldd "$binary")
if grep -q 'not found' <<<"$listing"; then
	echo "runtime-dir: ldd cannot resolve every library:" >&2
	grep 'not found' <<<"$listing" >&2
	exit 1
fi

place "$binary" "$(basename "$binary")" 0755
while read -r first arrow path _; do
	if [ "$arrow" = "=>" ]; then
		lib=$path
		dest="$(dirname "$(readlink -f "$lib")")/$first"
		mode=0644
	elif [ "${first#/}" != "$first" ]; then
		lib=$first # the loader: it must sit at the very path PT_INTERP names
		dest=$first
		mode=0755
	else
		continue # linux-vdso.so.1 lives in the kernel
	fi
	if [ $without_glibc -eq 1 ] && from_libc6 "$lib"; then
		continue
	fi
	place "$lib" "${dest#/}" "$mode"
done <<<"$listing"
