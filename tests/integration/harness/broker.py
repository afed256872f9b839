"""The broker under test: its environment, its process, and an mTLS client.

The broker is configured only by environment variables (src/core/config.h
names every one). It is ready when GET http://127.0.0.1:<OPS_PORT>/readyz
answers 200. Each instance gets a log directory of its own with stderr.log,
audit.log and env.txt, kept after the run for reading failures.
"""
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from .net import LOOPBACK, free_port
from .procs import Proc, StartupError

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", ": runtime error: ",
                   "WARNING: ThreadSanitizer")
# Passed through from the test's environment when set (ASan/UBSan builds).
PASSTHROUGH = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "ASAN_SYMBOLIZER_PATH")
SANITIZER_DEFAULTS = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1",
                      "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}


@dataclass
class Reply:
    """What the broker answered: status, headers (case-insensitive), body."""
    status: int
    headers: object
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    @property
    def request_id(self):
        return self.headers.get("X-Request-Id")

    def __repr__(self):
        return f"Reply({self.status}, {self.body[:300]!r})"


class BrokerClient:
    """Calls the broker's API over mTLS as one client certificate (an
    harness.pki.Issued, or None for no certificate)."""

    def __init__(self, base_url, ca_path, cert=None, timeout=15):
        self.base_url = base_url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(ca_path)
        self.session.cert = cert.pair if cert is not None else None
        self.timeout = timeout

    def request(self, method, path, params=None, json_body=None, data=None, headers=None):
        r = self.session.request(method, self.base_url + path, params=params, json=json_body,
                                 data=data, headers=headers, timeout=self.timeout)
        return Reply(r.status_code, r.headers, r.content)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def secret(self, name, key=None, **params):
        """GET /v1/secrets/{name}[/{key}] with query parameters."""
        path = f"/v1/secrets/{name}" + (f"/{key}" if key is not None else "")
        return self.get(path, params=params or None)

    def batch(self, items):
        return self.post("/v1/secrets/batch", json_body={"secrets": list(items)})

    def close(self):
        self.session.close()


class Broker:
    """One broker process."""

    def __init__(self, binary, env, log_dir, registry, ca_path):
        self.binary = Path(binary)
        self.env = dict(env)
        self.log_dir = Path(log_dir)
        self.registry = registry
        self.ca_path = ca_path
        self.port = int(self.env["SERVER_PORT"])
        self.ops_port = int(self.env["OPS_PORT"])
        self.url = f"https://{LOOPBACK}:{self.port}"
        self.ops_url = f"http://{LOOPBACK}:{self.ops_port}"
        self.stderr_path = self.log_dir / "stderr.log"
        self.audit_path = Path(self.env.get("AUDIT_LOG_PATH") or self.log_dir / "audit.log")
        self.proc = None
        self._clients = []
        self.ops = requests.Session()
        self.ops.trust_env = False

    def start(self, wait=True, timeout=None):
        if not self.binary.is_file():
            raise StartupError(
                f"broker binary {self.binary} does not exist: build it "
                f"(ninja -C build) or point SB_BROKER at it")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "env.txt").write_text(
            "".join(f"{k}={v}\n" for k, v in sorted(self.env.items())))
        self.proc = Proc("secrets-broker", [self.binary], self.stderr_path, env=self.env,
                         cwd=self.log_dir, registry=self.registry).start()
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def wait_ready(self, timeout=None):
        timeout = timeout or float(os.environ.get("SB_IT_BROKER_START_TIMEOUT", "30"))
        self.proc.wait_ready(lambda: self.readyz().status_code == 200, timeout,
                             f"ready (GET {self.ops_url}/readyz == 200)")

    def wait_exit(self, timeout=10):
        """For a broker expected to stop by itself (bad configuration):
        its exit status, or None if it is still running after timeout."""
        try:
            return self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def readyz(self):
        return self.ops.get(self.ops_url + "/readyz", timeout=2)

    def ops_get(self, path):
        r = self.ops.get(self.ops_url + path, timeout=5)
        return Reply(r.status_code, r.headers, r.content)

    def metrics(self):
        """The /metrics text parsed: {(name, ((label, value), ...)): value}."""
        from prometheus_client.parser import text_string_to_metric_families
        out = {}
        for fam in text_string_to_metric_families(self.ops_get("/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name, **labels):
        """One series' value now (0 when it is absent)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0)

    def client(self, cert, timeout=15):
        c = BrokerClient(self.url, self.ca_path, cert, timeout)
        self._clients.append(c)
        return c

    def signal(self, sig=signal.SIGHUP):
        self.proc.signal(sig)

    def stop(self, timeout=10):
        """SIGTERM, SIGKILL after `timeout`; returns the exit status."""
        for c in self._clients:
            c.close()
        if self.proc is None:
            return None
        return self.proc.stop(timeout)

    @property
    def returncode(self):
        return self.proc.returncode() if self.proc else None

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self):
        """stderr's JSON log lines, parsed (other lines are skipped)."""
        return _json_lines(self.stderr())

    def audit_records(self):
        try:
            return _json_lines(self.audit_path.read_text(errors="replace"))
        except FileNotFoundError:
            return []

    def sanitizer_reports(self):
        text = self.stderr()
        return [m for m in SANITIZER_MARKS if m in text]


def _json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def base_env(pki, log_dir, kubeconfig=None, incluster=None, aws_env=None, overrides=None):
    """The broker's environment, built from nothing (the developer's shell
    leaks in only through the sanitizer variables). overrides: name -> value,
    None deletes the name."""
    env = {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC",
        "SERVER_PORT": str(free_port()), "OPS_PORT": str(free_port()),
        "BIND_ADDRESS": LOOPBACK, "OPS_BIND_ADDRESS": LOOPBACK,
        "MTLS_CA_CERT_PATH": str(pki.ca_bundle),
        "MTLS_SERVER_CERT_PATH": str(pki.server.cert_path),
        "MTLS_SERVER_KEY_PATH": str(pki.server.key_path),
        "SPIFFE_TRUST_DOMAIN": pki.trust_domain,
        "SECRETS_BACKEND": "k8s,aws-secrets-manager",
        "AUDIT_LOG_ENABLED": "true", "AUDIT_LOG_PATH": str(Path(log_dir) / "audit.log"),
        "LOG_LEVEL": "debug", "WORKERS": "2", "SHUTDOWN_GRACE_SECONDS": "2",
    }
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    if incluster:
        env.update(incluster)
    env.update(aws_env or {})
    for name in PASSTHROUGH:
        if os.environ.get(name):
            env[name] = os.environ[name]
    for name, value in SANITIZER_DEFAULTS.items():
        env.setdefault(name, value)
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env
