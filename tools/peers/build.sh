#!/usr/bin/env bash
# Builds the real test peers (kube-apiserver, kubectl, etcd, helm) from their
# Go modules, pinned, into a cache outside the work tree keyed by version.
# A second run finds the binaries and returns at once.
#
# The Kubernetes staging modules are required at v0.0.0 by k8s.io/kubernetes
# and resolved there by local replaces, which Go ignores in a dependency.
# The replace lines are therefore generated here from k8s.io/kubernetes's own
# go.mod (every k8s.io/* module it requires at v0.0.0 is pointed at the
# published staging tag), never copied by hand.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
CACHE=${SECRETS_BROKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secrets-broker}
BIN="$CACHE/peers/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
here=$(cd "$(dirname "$0")" && pwd)

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gobuild"
# Two cores: one link of kube-apiserver takes a few GiB; keep it to 2 jobs.
export GOMAXPROCS=${GOMAXPROCS:-2}

have_all() {
	for b in kube-apiserver kubectl etcd helm; do
		[ -x "$BIN/$b" ] || return 1
	done
}

if have_all; then
	echo "$BIN"
	exit 0
fi

if ! command -v go >/dev/null; then
	echo "build.sh: the peers are not built and there is no Go toolchain (>= 1.26) on PATH" >&2
	exit 1
fi

# One build at a time (test-deps.sh and run-integration.sh may both call
# this); a second caller waits and then finds the binaries.
mkdir -p "$CACHE/peers"
exec 9>"$CACHE/peers/build.lock"
flock 9
if have_all; then
	echo "$BIN"
	exit 0
fi

mod="$CACHE/peers/mod-k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
mkdir -p "$mod" "$BIN.tmp"
cp "$here/tools.go.txt" "$mod/tools.go"
mkdir -p "$mod/etcd"
cp "$here/etcd-main.go.txt" "$mod/etcd/main.go"
cd "$mod"
[ -f go.mod ] || go mod init secrets-broker.invalid/peers >&2

stg="v0.${K8S_VERSION#v1.}"
kgomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
	sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$kgomod" | sort -u)
[ -n "$staging" ] || { echo "build.sh: no staging modules found in $kgomod" >&2; exit 1; }
for m in $staging; do
	go mod edit -replace="$m=$m@$stg"
done
echo "$staging" > staging-modules.txt
go mod edit -require="k8s.io/kubernetes@$K8S_VERSION" \
	-require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
go mod tidy >&2

v=k8s.io/component-base/version
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldf="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
ldf="$ldf -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
go build -trimpath -ldflags "$ldf" -o "$BIN.tmp/kube-apiserver" \
	k8s.io/kubernetes/cmd/kube-apiserver >&2
go build -trimpath -ldflags "$ldf" -o "$BIN.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.tmp/etcd" ./etcd >&2

# Helm lives in a module of its own: its k8s.io graph differs from the
# apiserver's and must not move it.
hmod="$CACHE/peers/mod-helm-$HELM_VERSION"
mkdir -p "$hmod"
cd "$hmod"
[ -f go.mod ] || go mod init secrets-broker.invalid/helm >&2
printf '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v4/cmd/helm"\n' > tools.go
go mod edit -require="helm.sh/helm/v4@$HELM_VERSION"
go mod tidy >&2
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
	-o "$BIN.tmp/helm" helm.sh/helm/v4/cmd/helm >&2

rm -rf "$BIN"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
