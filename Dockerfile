# syntax=docker/dockerfile:1
# The secrets-broker image: built from Debian bookworm packages, run on a
# distroless base (glibc, CA certificates, /etc/passwd with `nonroot`; no
# shell, no package manager) with the broker and exactly the shared libraries
# it needs that the base lacks. Runs as uid 65532 and with a read-only root
# filesystem; it writes nothing (the audit log goes to stdout).
#
#   docker build -t registry.example.com/secrets-broker:0.1.0 .
#
# tools/runtime-dir.sh gathers the runtime file set; the integration tests
# run the broker from that same set with chroot (tests/integration/test_deploy.py),
# since our machines have no container engine to build this file with.
#
# Both base images are pinned by digest (multi-architecture indexes). The
# digests were taken from public references and could not be checked from a
# machine without registry access: before a release, re-resolve them with
#   docker buildx imagetools inspect debian:bookworm-slim
#   docker buildx imagetools inspect gcr.io/distroless/base-nossl-debian12:nonroot
# and keep the two on the same Debian release (bookworm = debian12), so the
# libraries copied below match the base's glibc.
ARG BUILD_IMAGE=debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818
ARG RUNTIME_IMAGE=gcr.io/distroless/base-nossl-debian12:nonroot@sha256:be40c00dfabd86576d92666e87e406714d5618342de1a0c213ad232de255172e

FROM ${BUILD_IMAGE} AS build
# The packages tools/build-deps.sh installs, minus the test-only ones.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential meson ninja-build pkg-config \
      libmicrohttpd-dev libgnutls28-dev libcurl4-gnutls-dev libjansson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY meson.build meson_options.txt ./
COPY src/ src/
COPY bench/ bench/
COPY tools/runtime-dir.sh tools/
RUN meson setup /build -Dbuildtype=release -Dtests=false -Dwerror=true \
 && ninja -C /build secrets-broker \
 && strip --strip-unneeded /build/secrets-broker \
 && /build/secrets-broker --version
# The binary at /secrets-broker and its libraries under /usr/lib/<triplet>/,
# leaving out Debian's libc6 files, which the distroless base carries.
# libgcc_s is not needed: nothing the broker runs cancels or unwinds threads
# (libldap's pthread_exit is reachable only through ldap:// URLs, which the
# broker never asks libcurl for).
RUN tools/runtime-dir.sh --without-glibc /build/secrets-broker /rootfs

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="secrets-broker" \
      org.opencontainers.image.description="Secrets over mutual TLS, authorized by Kubernetes RBAC" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs/ /
USER 65532:65532
EXPOSE 8443 8081
ENTRYPOINT ["/secrets-broker"]
