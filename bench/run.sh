#!/usr/bin/env bash
# `make bench` (bench/run.sh BUILD_DIR [bench.py options]): installs nginx
# from Debian when missing, builds the broker and the load generator, makes
# sure W5's peers are there, and runs bench/bench.py, which benchmarks the
# broker side by side with nginx and saves the table under bench/results/.
# See bench/README.md and docs/performance.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
shift || true
cd "$root"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v taskset >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
case " $* " in *" --crosscheck "*) command -v ab >/dev/null || missing+=(apache2-utils) ;; esac
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench: installing ${missing[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >&2
fi

[ -f "$build/build.ninja" ] || meson setup "$build" -Dwerror=true
ninja -C "$build" secrets-broker bench/loadgen >&2

# W5 runs against a real kube-apiserver: the integration virtualenv and the
# peer binaries (built once and cached; the first build takes ~10 minutes).
if [ -z "${BENCH_SKIP_W5:-}" ] && ! tools/test-deps.sh; then
	echo "bench: tools/test-deps.sh failed; W5 will be skipped" >&2
fi

# 1,000 idle connections (W6) need more descriptors than the usual 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec python3 bench/bench.py --build "$build" "$@"
