#!/usr/bin/env bash
# Installs the Debian packages the broker builds against, when missing.
# Idempotent: a machine that has them returns at once.
set -euo pipefail

pkgs=(build-essential meson ninja-build pkg-config libmicrohttpd-dev libgnutls28-dev
      libcurl4-gnutls-dev libjansson-dev libcmocka-dev gnutls-bin curl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "build-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
