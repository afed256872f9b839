"""The side-by-side benchmark of secrets-broker and nginx (bench/README.md).

Runs W1-W4 and W6 with the broker and nginx under the same mutual TLS set-up,
each server pinned to core 0 and the load generator (bench/loadgen) to core
1, interleaving the runs (broker, nginx, broker, ...); runs W5 through
bench/w5.py when the integration peers are available; then prints the table
and saves it with every run's figures under bench/results/.

Standard library only, so it runs with the system python3.
"""
import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import report

REPO = Path(__file__).resolve().parents[1]
SERVER_CPU, CLIENT_CPU = "0", "1"
SECRET = "db"  # the example secret development mode writes


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{what} not ready within {timeout}s")


class Proc:
    """A server process started in its own session, stopped by its pid."""

    def __init__(self, name, argv, env, log_path, cwd=None):
        self.name = name
        with open(log_path, "ab") as out:
            self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        try:
            os.killpg(self.pid, signal.SIGKILL)  # its own group only
        except (ProcessLookupError, PermissionError):
            pass


class Broker:
    """The broker on the file backend: WORKERS=1, cache, audit log and
    metrics on, TLS 1.3 with a required client certificate."""

    def __init__(self, binary, work, pki, secrets_dir, extra_env=None, name="broker",
                 wrapper=()):
        self.binary, self.work, self.pki, self.name = binary, work, pki, name
        self.wrapper = list(wrapper)  # e.g. valgrind and its options
        self.port, self.ops_port = free_port(), free_port()
        self.audit = work / f"{name}-audit.log"
        self.env = {
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC",
            "SECRETS_BACKEND": "file", "FILE_BACKEND_DIR": str(secrets_dir),
            "MTLS_CA_CERT_PATH": str(pki / "ca.crt"),
            "MTLS_SERVER_CERT_PATH": str(pki / "server.crt"),
            "MTLS_SERVER_KEY_PATH": str(pki / "server.key"),
            "BIND_ADDRESS": "127.0.0.1", "OPS_BIND_ADDRESS": "127.0.0.1",
            "SERVER_PORT": str(self.port), "OPS_PORT": str(self.ops_port),
            "WORKERS": "1", "AUDIT_LOG_PATH": str(self.audit), "LOG_LEVEL": "info",
        }
        self.env.update(extra_env or {})
        self.proc = None

    def start(self, wait=True):
        argv = ["taskset", "-c", SERVER_CPU, *self.wrapper, str(self.binary)]
        self.proc = Proc(self.name, argv, self.env, self.work / f"{self.name}.log", cwd=self.work)
        if wait:
            wait_for(self.ready, 60 if self.wrapper else 20, "broker")
        return self

    def ready(self):
        if not self.proc.alive():
            raise RuntimeError(f"broker exited; see {self.work / 'broker.log'}")
        url = f"http://127.0.0.1:{self.ops_port}/readyz"
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200

    @property
    def cpu_pids(self):
        return [self.proc.pid]

    @property
    def rss_pids(self):
        return [self.proc.pid]

    def after_run(self):
        # The audit log grows by ~0.5 KB per request; keep the disk calm.
        # The broker appends (O_APPEND), so truncation is safe.
        with open(self.audit, "r+b") as f:
            f.truncate(0)

    def stop(self):
        if self.proc:
            self.proc.stop()


NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    default_type application/json;
    types {{ }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {pki}/server.crt;
        ssl_certificate_key {pki}/server.key;
        ssl_client_certificate {pki}/ca.crt;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 1h;
        root {dir}/root;
        add_header Cache-Control no-store;
    }}
}}
"""


class Nginx:
    """nginx from Debian, one worker, serving `body` as a static file at
    the broker's path, with the same certificates and TLS settings."""

    name = "nginx"

    def __init__(self, work, pki, body):
        self.dir = work / "nginx"
        self.port = free_port()
        doc = self.dir / "root" / "v1" / "secrets"
        doc.mkdir(parents=True, exist_ok=True)
        (doc / SECRET).write_bytes(body)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, pki=pki))
        # The worker runs as nobody: it must reach the document root.
        for p in [work, *self.dir.rglob("*"), self.dir]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        self.proc = None

    def start(self, wait=True):
        argv = ["taskset", "-c", SERVER_CPU, "nginx", "-c", str(self.conf), "-p", str(self.dir)]
        self.proc = Proc("nginx", argv, {"PATH": "/usr/sbin:/usr/bin:/bin"},
                         self.dir / "nginx.out")
        if wait:
            wait_for(lambda: self.worker() is not None and self._listening(), 20, "nginx")
        return self

    def _listening(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def worker(self):
        kids = children(self.proc.pid)
        return kids[0] if kids else None

    @property
    def cpu_pids(self):
        return [self.worker()]

    @property
    def rss_pids(self):
        return [self.proc.pid, self.worker()]

    def after_run(self):
        pass

    def stop(self):
        if self.proc:
            self.proc.stop()


class Loadgen:
    def __init__(self, binary, pki):
        self.binary = binary
        self.tls = ["--ca", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"),
                    "--key", str(pki / "client.key")]

    def run(self, port, *args, pids=(), timeout=300):
        argv = ["taskset", "-c", CLIENT_CPU, str(self.binary), "--port", str(port), *self.tls,
                *map(str, args)]
        for pid in pids:
            argv += ["--pid", str(pid)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        lines = out.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"loadgen printed nothing: {out.stderr[-2000:]}")
        return json.loads(lines[-1])


WORKLOADS = {
    # name: loadgen arguments (besides --duration and --warmup)
    "W1@1": ["--mode", "keepalive", "--conns", "1"],
    "W1@64": ["--mode", "keepalive", "--conns", "64"],
    "W3": ["--mode", "handshake", "--conns", "16"],
    "W4": ["--mode", "resume", "--conns", "16"],
}


def interleaved(servers, lg, seconds, reps, only):
    """Every workload: broker, nginx, broker, nginx... `reps` of each."""
    runs = []
    for wl, args in WORKLOADS.items():
        if only and wl not in only:
            continue
        for rep in range(reps):
            for srv in servers:
                r = lg.run(srv.port, "--path", f"/v1/secrets/{SECRET}", *args,
                           "--warmup", "1", "--duration", seconds, pids=srv.cpu_pids)
                srv.after_run()
                r.update(workload=wl, server=srv.name, rep=rep + 1)
                runs.append(r)
                log(f"{wl:6} {srv.name:6} #{rep + 1}: {r['rps']:9.1f}/s  "
                    f"cpu {r['cpu_us_per_req']:7.1f} us  p50 {r['p50_us']:7.1f}  "
                    f"p99 {r['p99_us']:8.1f} us  errors {r['errors']}")
                time.sleep(0.5)
    return runs


def make_secrets(root, count, size):
    """count secrets of one `size`-byte value each: dev/s<i>.json."""
    d = root / "dev"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        value = secrets.token_hex(size // 2)
        (d / f"s{i}.json").write_text(json.dumps({"value": value}))
    return root


def start_timed(srv, lg):
    """Starts srv and probes it until the first request is answered: the
    milliseconds from just before the process was started."""
    t0 = time.time_ns()
    srv.start(wait=False)
    r = lg.run(srv.port, "--mode", "probe", "--path", f"/v1/secrets/{SECRET}",
               "--since-ns", t0, timeout=60)
    if r["requests"] != 1:
        raise RuntimeError(f"{srv.name} never answered: {r}")
    return r["ready_ms"]


def footprint(make_broker, make_nginx, lg, reps):
    """W6: start to first answer, idle RSS, RSS with 1,000 idle connections
    and with 10,000 cached 1 KiB secrets."""
    out = {"broker": {"ready_ms": [], "idle_kb": [], "conns1000_kb": [], "cached10k_kb": []},
           "nginx": {"ready_ms": [], "idle_kb": [], "conns1000_kb": []}}
    for rep in range(reps):
        for name, make in (("broker", make_broker), ("nginx", make_nginx)):
            srv = make()
            try:
                out[name]["ready_ms"].append(start_timed(srv, lg))
                time.sleep(1)
                out[name]["idle_kb"].append(sum(rss_kb(p) or 0 for p in srv.rss_pids))
                if rep == 0:
                    r = lg.run(srv.port, "--mode", "hold", "--conns", 1000, "--duration", 2,
                               "--path", f"/v1/secrets/{SECRET}", pids=srv.rss_pids)
                    if r["errors"]:
                        raise RuntimeError(f"{name}: {r['errors']} of 1000 connections failed:"
                                           f" {r['last_error']}")
                    out[name]["conns1000_kb"].append(sum(r["rss_kb"]))
            finally:
                srv.stop()
        log(f"W6 #{rep + 1}: broker ready {out['broker']['ready_ms'][-1]:.1f} ms, "
            f"idle {out['broker']['idle_kb'][-1]} kB; nginx ready "
            f"{out['nginx']['ready_ms'][-1]:.1f} ms, idle {out['nginx']['idle_kb'][-1]} kB")
    return out


def cached_10k(make_broker, lg, reps, out):
    for rep in range(reps):
        srv = make_broker()
        try:
            start_timed(srv, lg)
            time.sleep(1)
            idle = rss_kb(srv.proc.pid)
            r = lg.run(srv.port, "--mode", "keepalive", "--conns", 4, "--requests", 10000,
                       "--range", 10000, "--path", "/v1/secrets/s{i}", pids=[srv.proc.pid])
            if r["errors"] or r["requests"] != 10000:
                raise RuntimeError(f"10,000 secrets: {r}")
            # Read again: every secret is now a cache hit.
            lg.run(srv.port, "--mode", "keepalive", "--conns", 4, "--requests", 10000,
                   "--range", 10000, "--path", "/v1/secrets/s{i}")
            time.sleep(1)
            out["broker"]["cached10k_kb"].append(rss_kb(srv.proc.pid))
            out["broker"].setdefault("cached10k_idle_kb", []).append(idle)
            log(f"W6 10k #{rep + 1}: idle {idle} kB -> {out['broker']['cached10k_kb'][-1]} kB")
        finally:
            srv.stop()


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5))
    return total


def ab_run(srv, pki, work, conns, requests):
    """ApacheBench (OpenSSL) against srv: keep-alive, TLS 1.3, the same
    client certificate; server CPU from /proc as for loadgen."""
    pem = work / "client-with-key.pem"
    pem.write_bytes((pki / "client.crt").read_bytes() + (pki / "client.key").read_bytes())
    argv = ["taskset", "-c", CLIENT_CPU, "ab", "-q", "-k", "-l", "-c", str(conns),
            "-n", str(requests), "-E", str(pem), "-f", "TLS1.3",
            f"https://127.0.0.1:{srv.port}/v1/secrets/{SECRET}"]
    t0 = cpu_ticks(srv.cpu_pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    ticks = cpu_ticks(srv.cpu_pids) - t0
    rps = float(re.search(r"Requests per second:\s+([0-9.]+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+([0-9]+)", out).group(1))
    mean_ms = float(re.search(r"Time per request:\s+([0-9.]+)", out).group(1))
    hz = os.sysconf("SC_CLK_TCK")
    return {"rps": rps, "errors": failed, "mean_latency_us": mean_ms * 1000,
            "cpu_us_per_req": ticks * 1e6 / hz / requests}


def crosscheck(servers, lg, pki, work, seconds):
    """loadgen and ab side by side at 64 and 1 keep-alive connections."""
    rows = []
    for conns in (64, 1):
        for srv in servers:
            r = lg.run(srv.port, "--path", f"/v1/secrets/{SECRET}", "--conns", conns,
                       "--warmup", "1", "--duration", seconds, pids=srv.cpu_pids)
            srv.after_run()
            n = max(1000, int(r["rps"] * float(seconds)))
            a = ab_run(srv, pki, work, conns, n)
            srv.after_run()
            rows.append({"server": srv.name, "conns": conns, "loadgen": r, "ab": a})
            log(f"{srv.name:6} {conns:2} conns: loadgen {r['rps']:8.0f}/s "
                f"cpu {r['cpu_us_per_req']:5.1f} us mean {sum_mean(r):7.1f} us | "
                f"ab {a['rps']:8.0f}/s cpu {a['cpu_us_per_req']:5.1f} us "
                f"mean {a['mean_latency_us']:7.1f} us errors {a['errors']}")
    return rows


def sum_mean(r):
    return r["conns"] / r["rps"] * 1e6 if r["rps"] else 0


def compare(runs):
    """--compare: medians of the two brokers, side by side."""
    print("| workload | figure | broker | compare | compare/broker |\n|---|---|---:|---:|---:|")
    for wl in WORKLOADS:
        for field in ("rps", "cpu_us_per_req", "p50_us", "p99_us"):
            a = [r[field] for r in runs if r["workload"] == wl and r["server"] == "broker"]
            b = [r[field] for r in runs if r["workload"] == wl and r["server"] == "compare"]
            if a and b:
                ma, mb = statistics.median(a), statistics.median(b)
                print(f"| {wl} | {field} | {ma:.1f} | {mb:.1f} | {mb / ma if ma else 0:.3f} |")


def dev_pki(binary, work):
    """Development mode makes the PKI and the example secrets; it is started
    once for that and stopped."""
    dev = work / "dev"
    ops = free_port()
    env = {"PATH": "/usr/bin:/bin", "SB_DEV_DIR": str(dev), "SERVER_PORT": str(free_port()),
           "OPS_PORT": str(ops), "WORKERS": "1"}
    p = Proc("dev", [str(binary), "--dev"], env, work / "dev.log", cwd=work)
    try:
        url = f"http://127.0.0.1:{ops}/readyz"
        wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 30, "dev broker")
    finally:
        p.stop()
    return dev / "pki", dev / "secrets"


def fetch_body(lg, srv, pki):
    """The exact bytes the warm broker answers for the secret."""
    argv = ["curl", "-sf", "--cacert", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"),
            "--key", str(pki / "client.key"), f"https://localhost:{srv.port}/v1/secrets/{SECRET}"]
    for _ in range(2):  # the first answer is a miss, the second a cache hit
        body = subprocess.run(argv, capture_output=True, check=True, timeout=10).stdout
    return body


def run_w5(args, work):
    venv_py = REPO / ".venv" / "bin" / "python"
    if args.skip_w5:
        return None, "skipped (--skip-w5)"
    if not venv_py.exists():
        return None, "skipped: no .venv (run tools/test-deps.sh)"
    out = work / "w5.json"
    cmd = [str(venv_py), str(REPO / "bench" / "w5.py"), "--broker", str(args.binary),
           "--loadgen", str(args.loadgen), "--seconds", str(args.seconds),
           "--reps", str(args.reps), "--work", str(work / "w5"), "--out", str(out)]
    log("W5: starting etcd and kube-apiserver (bench/w5.py)")
    p = subprocess.run(cmd, timeout=600)
    if p.returncode != 0 or not out.exists():
        return None, f"failed (bench/w5.py exit {p.returncode}; see its output above)"
    return json.loads(out.read_text()), None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 6)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 5)))
    ap.add_argument("--only", nargs="*", help="workloads to run (W1@1 W1@64 W3 W4 W5 W6)")
    ap.add_argument("--skip-w5", action="store_true", default=bool(os.environ.get("BENCH_SKIP_W5")))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--broker", metavar="BINARY", help="the broker binary (default: BUILD's)")
    ap.add_argument("--compare", metavar="BINARY",
                    help="before/after: run W1-W4 against this other broker binary, not nginx")
    ap.add_argument("--crosscheck", action="store_true",
                    help="only compare loadgen with ab (ApacheBench) on both servers")
    args = ap.parse_args()
    build = (REPO / args.build).resolve() if not Path(args.build).is_absolute() else Path(args.build)
    args.binary, args.loadgen = build / "secrets-broker", build / "bench" / "loadgen"
    if args.broker:
        args.binary = Path(args.broker).resolve()
    only = set(args.only or [])

    work = Path(tempfile.mkdtemp(prefix="sb-bench."))
    started = time.time()
    servers = []
    try:
        machine = report.machine(args.binary)
        pki, secrets_dir = dev_pki(args.binary, work)
        lg = Loadgen(args.loadgen, pki)
        broker = Broker(args.binary, work, pki, secrets_dir).start()
        servers.append(broker)
        body = fetch_body(lg, broker, pki)
        if args.compare:
            other = Broker(Path(args.compare).resolve(), work, pki, secrets_dir, name="compare")
            servers.append(other.start())
            fetch_body(lg, other, pki)
            compare(interleaved(servers, lg, args.seconds, args.reps, only))
            return
        nginx = Nginx(work, pki, body).start()
        servers.append(nginx)
        log(f"broker pid {broker.proc.pid} port {broker.port}; nginx worker {nginx.worker()} "
            f"port {nginx.port}; body {len(body)} bytes; {args.seconds:g} s per run")

        if args.crosscheck:
            rows = crosscheck([broker, nginx], lg, pki, work, args.seconds)
            out = REPO / "bench" / "results" / "crosscheck.json"
            out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
            log(f"saved {out.relative_to(REPO)}")
            return
        runs = interleaved([broker, nginx], lg, args.seconds, args.reps, only)
        for srv in servers:
            srv.stop()
        servers.clear()

        w6 = None
        if not only or "W6" in only:
            big = make_secrets(work / "secrets10k", 10000, 1024)
            shutil.copytree(secrets_dir / "dev", big / "dev", dirs_exist_ok=True)
            env10k = {"CACHE_MAX_SIZE": "20000"}
            w6 = footprint(lambda: Broker(args.binary, work, pki, secrets_dir),
                           lambda: Nginx(work, pki, body), lg, args.reps)
            cached_10k(lambda: Broker(args.binary, work, pki, big, env10k), lg, args.reps, w6)

        w5, w5_note = (None, "not selected")
        if not only or "W5" in only:
            w5, w5_note = run_w5(args, work)

        machine["load_after"] = report.loadavg()
        machine["bench_seconds"] = round(time.time() - started)
        result = report.build(machine, runs, w6, w5, w5_note, args)
        md, js = report.save(result, REPO / "bench" / "results")
        print(report.markdown(result))
        log(f"saved {md.relative_to(REPO)} and {js.relative_to(REPO)}")
    finally:
        for srv in servers:
            srv.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
