#!/usr/bin/env bash
# Installs what the integration tests need, when missing: Debian packages,
# the virtualenv .venv (pinned from tests/integration/requirements.txt) and
# the peer binaries (tools/peers/build.sh, cached by version). Idempotent: a
# warm machine gets through in a second or two.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
reqs="$root/tests/integration/requirements.txt"
python=/usr/bin/python3

# clang-format and cppcheck run in tools/lint/run.sh.
pkgs=(python3 python3-venv ca-certificates openssl clang-format cppcheck curl util-linux mount coreutils)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "test-deps: installing ${missing[*]}" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >&2
fi

# The virtualenv is rebuilt when the pins or the interpreter change.
stamp="$venv/.sb-requirements"
want="$(sha256sum "$reqs" | cut -d' ' -f1) $($python -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	echo "test-deps: building $venv from $reqs" >&2
	rm -rf "$venv"
	$python -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
	echo "$want" > "$stamp"
fi

"$root/tools/peers/build.sh" >/dev/null
