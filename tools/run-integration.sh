#!/usr/bin/env bash
# Runs the integration tests against one build of the broker:
#   tools/run-integration.sh BUILD_DIR [pytest args...]
# e.g. tools/run-integration.sh build -k impersonat -x
# With no test file among the arguments it runs all of tests/integration.
# The broker is $SB_BROKER, else BUILD_DIR/secrets-broker. Logs of the run go
# to BUILD_DIR/integration-logs/. Exits with pytest's status, except that a
# selection (-m/-k) matching no test counts as success (pytest says 5).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ]; then
	echo "usage: $0 BUILD_DIR [pytest args...]" >&2
	exit 2
fi
build=$1
shift
case "$build" in
/*) ;;
*) build="$PWD/$build" ;;
esac

if [ ! -x "$root/.venv/bin/pytest" ]; then
	echo "run-integration: no $root/.venv; run tools/test-deps.sh first" >&2
	exit 2
fi
peers=$("$root/tools/peers/build.sh") || { echo "run-integration: peer build failed" >&2; exit 2; }

export SB_PEERS_DIR="$peers"
export SB_BROKER="${SB_BROKER:-$build/secrets-broker}"
export SB_IT_LOG_DIR="${SB_IT_LOG_DIR:-$build/integration-logs}"
case "$SB_BROKER" in
/*) ;;
*) SB_BROKER="$PWD/$SB_BROKER" ;;
esac

echo "run-integration: broker $SB_BROKER"
echo "run-integration: $("$peers/kube-apiserver" --version), etcd $("$peers/etcd" --version |
	sed -n 's/^etcd Version: //p'), moto $("$root/.venv/bin/python" -c \
	'from importlib.metadata import version; print(version("moto"))')"
echo "run-integration: logs in $SB_IT_LOG_DIR"

cd "$root"
# The whole suite, unless the arguments name test files or tests.
for a in "$@"; do
	case "$a" in tests/integration/* | *.py | *.py::*) has_path=1 ;; esac
done
[ -n "${has_path:-}" ] || set -- tests/integration "$@"
start=$(date +%s)
"$root/.venv/bin/pytest" "$@"
status=$?
echo "run-integration: pytest exited $status after $(($(date +%s) - start))s;" \
	"logs in $SB_IT_LOG_DIR"

selected=0
for a in "$@"; do
	case "$a" in -m | -k | -m* | -k*) selected=1 ;; esac
done
if [ $status -eq 5 ] && [ $selected -eq 1 ]; then
	echo "run-integration: the selection matched no test"
	exit 0
fi
exit $status
