"""W5: what the broker adds to a cache miss, against a direct GET of the same
Secret from kube-apiserver (bench/README.md).

Starts etcd and kube-apiserver with the integration harness (its classes are
imported, not changed), gives the broker its product RBAC (impersonation),
creates a caller ServiceAccount allowed to get one Secret, then measures
with bench/loadgen at one keep-alive connection, interleaved:

  broker  GET /v1/secrets/db?refresh=true over mTLS (every request misses the
          value cache and reads from the API server as the caller)
  direct  GET /api/v1/namespaces/<ns>/secrets/db with the caller's own
          ServiceAccount token
  as-broker the same GET as the broker makes it (its own token and
          Impersonate-User: the caller), to tell the API server's share of
          the difference (impersonation) from the broker's own

The broker runs with SECRETS_BACKEND=k8s, WORKERS=1, pinned to CPU 0; the
load generator, etcd and kube-apiserver to CPU 1, so that the broker's work
and the API server's do not compete for one core (in a cluster they run on
different machines). Runs with the integration virtualenv (.venv).
"""
import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import procs  # noqa: E402
from harness.broker import Broker, base_env  # noqa: E402
from harness.identity import BrokerIdentity  # noqa: E402
from harness.kube import KubeCluster, sa_username  # noqa: E402
from harness.pki import TestPKI  # noqa: E402

NS, SA, SECRET = "bench", "app", "db"


def log(msg):
    print(f"w5: {msg}", file=sys.stderr, flush=True)


def peers_dir():
    if os.environ.get("SB_PEERS_DIR"):
        return Path(os.environ["SB_PEERS_DIR"])
    out = subprocess.run([str(REPO / "tools" / "peers" / "build.sh")], capture_output=True,
                         text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def loadgen(args, port, path, ca, tls, pid, seconds):
    argv = ["taskset", "-c", "1", str(args.loadgen), "--port", str(port), "--path", path,
            "--ca", str(ca), *tls, "--conns", "1", "--warmup", "1", "--duration", str(seconds),
            "--pid", str(pid)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if not out.stdout.strip():
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def counter(text, name):
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M):
        total += float(m.group(1))
    return total


def metrics(broker):
    with urllib.request.urlopen(broker.ops_url + "/metrics", timeout=5) as r:
        return r.read().decode()


def pin(pid, cpu):
    """Every thread of pid (Go starts more later: they inherit it)."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True,
                   capture_output=True)


def setup(cluster, pki):
    admin = cluster.admin
    admin.create_namespace(NS)
    admin.create_service_account(NS, SA)
    admin.create_secret(NS, SECRET, string_data={"user": "app",
                                                 "password": secrets.token_hex(16)})
    admin.grant_secret_read(NS, SA, [SECRET])
    token, _ = admin.token_request(NS, SA, expiration_seconds=3600)
    return pki.client(NS, SA), token


def start_broker(args, work, registry, pki, ident):
    env = base_env(pki, work / "broker", kubeconfig=ident.kubeconfig, overrides={
        "SECRETS_BACKEND": "k8s", "WORKERS": "1", "LOG_LEVEL": "warn",
        "REFRESH_RATE_PER_MINUTE": "1000000", "ASAN_OPTIONS": None, "UBSAN_OPTIONS": None})
    broker = Broker(args.broker, env, work / "broker", registry, pki.ca_bundle).start()
    pin(broker.pid, "0")  # every thread exists once it is ready
    return broker


def measure(args, cluster, broker, pki, caller, token, broker_token):
    tls = ["--cert", str(caller.cert_path), "--key", str(caller.key_path)]
    runs = []
    for rep in range(args.reps):
        before = metrics(broker)
        r = loadgen(args, broker.port, f"/v1/secrets/{SECRET}?refresh=true", pki.ca_bundle, tls,
                    broker.pid, args.seconds)
        after = metrics(broker)
        fetched = "secrets_broker_secrets_fetched_total"
        r.update(target="broker", rep=rep + 1,
                 backend_reads=counter(after, fetched) - counter(before, fetched))
        runs.append(r)
        log(f"broker #{rep + 1}: {r['rps']:.0f}/s p50 {r['p50_us']:.0f} us "
            f"p99 {r['p99_us']:.0f} us errors {r['errors']} backend reads "
            f"{r['backend_reads']:.0f}")
        r = loadgen(args, cluster.port, f"/api/v1/namespaces/{NS}/secrets/{SECRET}",
                    cluster.ca_path, ["--header", f"Authorization: Bearer {token}"],
                    cluster.apiserver.pid, args.seconds)
        r.update(target="direct", rep=rep + 1)
        runs.append(r)
        log(f"direct #{rep + 1}: {r['rps']:.0f}/s p50 {r['p50_us']:.0f} us "
            f"p99 {r['p99_us']:.0f} us errors {r['errors']}")
        r = loadgen(args, cluster.port, f"/api/v1/namespaces/{NS}/secrets/{SECRET}",
                    cluster.ca_path, ["--header", f"Authorization: Bearer {broker_token}",
                                      "--header", f"Impersonate-User: {sa_username(NS, SA)}"],
                    cluster.apiserver.pid, args.seconds)
        r.update(target="as-broker", rep=rep + 1)
        runs.append(r)
        log(f"as-broker #{rep + 1}: {r['rps']:.0f}/s p50 {r['p50_us']:.0f} us "
            f"p99 {r['p99_us']:.0f} us errors {r['errors']}")
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.broker, args.loadgen = Path(args.broker).resolve(), Path(args.loadgen).resolve()

    # A run directory of our own: the integration tests' reaper never
    # touches it, and ours stops every process at exit.
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    run_dir = procs.new_run_dir(root)
    registry = procs.Registry(run_dir)
    registry.remove_dir_at_exit = True
    cluster = KubeCluster(peers_dir(), run_dir / "kube", run_dir / "logs", registry)
    try:
        t0 = time.monotonic()
        cluster.start()
        log(f"etcd and kube-apiserver ready in {time.monotonic() - t0:.1f} s")
        pin(cluster.etcd.pid, "1")
        pin(cluster.apiserver.pid, "1")
        ident = BrokerIdentity(cluster, run_dir / "identity").setup()
        pki = TestPKI(run_dir / "pki")
        caller, token = setup(cluster, pki)
        broker = start_broker(args, run_dir, registry, pki, ident)
        runs = measure(args, cluster, broker, pki, caller, token, ident.token)
        Path(args.out).write_text(json.dumps({"runs": runs}) + "\n")
    finally:
        registry.stop_all()


if __name__ == "__main__":
    main()
