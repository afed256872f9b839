"""Fixtures for the integration tests. Peers (etcd, kube-apiserver, moto)
start once per session, lazily, on loopback ports; tests isolate with unique
namespaces. See docs/testing.md.

Environment:
  SB_BROKER          the broker binary (default: build/secrets-broker)
  SB_PEERS_DIR       directory with kube-apiserver, etcd, kubectl (default:
                     what tools/peers/build.sh prints)
  SB_IT_LOG_DIR      where logs go (default: build/integration-logs)
  SB_IT_KEEP=1       keep the run's work directory (keys, etcd data)
"""
import os
import re
import resource
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import procs
from harness.aws import AwsPeer, moto_version
from harness.broker import Broker, base_env
from harness.canary import CanaryRegistry
from harness.identity import BrokerIdentity
from harness.kube import KubeClient, KubeCluster, sa_username
from harness.pki import TestPKI
from harness.proxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
_T0 = time.monotonic()
_STARTUP = {}  # peer -> seconds it took to start


def pytest_configure(config):
    # A SIGTERM (a CI timeout, a developer's kill) becomes an interrupt, so
    # pytest still runs the teardowns that stop every peer and broker.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)
    # Thousands of test connections (test_resilience's slow clients) need
    # more descriptors than the usual soft limit; the peers inherit it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else max(soft, 65536), hard))


def _peers_dir():
    if os.environ.get("SB_PEERS_DIR"):
        return Path(os.environ["SB_PEERS_DIR"])
    out = subprocess.run([str(REPO / "tools/peers/build.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.exit(f"tools/peers/build.sh failed:\n{out.stderr[-4000:]}", returncode=3)
    return Path(out.stdout.strip().splitlines()[-1])


def _version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def pytest_report_header(config):
    bins = _peers_dir()
    os.environ["SB_PEERS_DIR"] = str(bins)
    broker = os.environ.get("SB_BROKER") or str(REPO / "build/secrets-broker")
    return [f"peers: {_version([bins / 'kube-apiserver', '--version'])}, "
            f"{_version([bins / 'etcd', '--version'])}, moto {moto_version()}",
            f"broker: {broker}", f"logs: {_log_root()}"]


def _log_root():
    return Path(os.environ.get("SB_IT_LOG_DIR") or REPO / "build" / "integration-logs")


def _slug(text, limit):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


# Session: the run, its logs and processes.

@pytest.fixture(scope="session")
def log_dir():
    """Logs of this run: peers/ (etcd, kube-apiserver, kube-audit, moto,
    proxies) and broker/<test>/ (stderr, audit, env). Replaced each run."""
    root = _log_root()
    for sub in ("peers", "broker"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    return root


@pytest.fixture(scope="session")
def run(log_dir):
    """The run's work directory (temporary) and its process registry.
    Processes left by an earlier run that died are reaped first."""
    reaped = procs.reap_stale_runs()
    if reaped:
        print(f"\nreaped processes of an earlier run: {reaped}")
    run_dir = procs.new_run_dir()
    registry = procs.Registry(run_dir)
    registry.remove_dir_at_exit = os.environ.get("SB_IT_KEEP") != "1"
    yield registry
    registry.stop_all()
    if os.environ.get("SB_IT_KEEP") == "1":
        print(f"\nwork directory kept: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def peers_bin():
    return _peers_dir()


@pytest.fixture(scope="session")
def kube(run, log_dir, peers_bin):
    """The control plane (harness.kube.KubeCluster): .admin (KubeClient as
    system:masters), .audit (KubeAudit), .server, .ca_path, .kubectl()."""
    cluster = KubeCluster(peers_bin, run.run_dir / "kube", log_dir / "peers", run)
    t0 = time.monotonic()
    try:
        cluster.start()
        _STARTUP["etcd+kube-apiserver"] = time.monotonic() - t0
    except procs.StartupError as e:
        cluster.stop()
        pytest.fail(str(e), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kube_admin(kube):
    return kube.admin


@pytest.fixture(scope="session")
def kube_audit(kube):
    return kube.audit


@pytest.fixture(scope="session")
def aws(run, log_dir):
    """moto behind a counting, fault-injecting proxy (harness.aws.AwsPeer)."""
    peer = AwsPeer(run.run_dir / "moto", log_dir / "peers", run)
    peer.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        peer.start()
        _STARTUP["moto"] = time.monotonic() - t0
    except procs.StartupError as e:
        pytest.fail(str(e), pytrace=False)
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def broker_aws_keys(aws):
    """Static keys of the IAM user `secrets-broker` (read-only on secrets)."""
    return aws.create_user("secrets-broker")


@pytest.fixture(scope="session")
def pki(run):
    """The callers' PKI (harness.pki.TestPKI): .ca_bundle, .server,
    .client(ns, sa), .bad(kind, ns, sa), .mint(...)."""
    return TestPKI(run.run_dir / "callers-pki")


@pytest.fixture(scope="session")
def broker_identity(kube, run):
    """ServiceAccount secrets-broker-system/secrets-broker with the product's
    RBAC (harness.identity.BrokerIdentity): .kubeconfig, .incluster()."""
    return BrokerIdentity(kube, run.run_dir / "broker-identity").setup()


@pytest.fixture(scope="session")
def kube_proxy(kube, log_dir):
    """A fault-injecting TLS proxy in front of kube-apiserver (same CA and
    serving certificate, so clients cannot tell)."""
    listen = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    listen.load_cert_chain(*kube.serving.pair)
    upstream = ssl.create_default_context(cafile=str(kube.ca_path))
    proxy = FaultProxy("kube", "127.0.0.1", kube.port, listen_tls=listen,
                       upstream_tls=upstream, upstream_server_name="127.0.0.1",
                       log_path=log_dir / "peers" / "kube-proxy.log").start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def canaries(log_dir):
    """Makes canary secret values; at the end of the session every log of
    the run is searched for them, and a hit fails the session."""
    registry = CanaryRegistry()
    yield registry
    hits = registry.scan([log_dir / "peers", log_dir / "broker"])
    if hits:
        report = "\n".join(f"  {path}: {value}" for path, value in hits)
        pytest.fail(f"secret values (canaries) found in outputs:\n{report}", pytrace=False)


# Per test: namespaces, callers, brokers.

@pytest.fixture
def make_ns(kube_admin, request):
    """make_ns(label='') -> a new, unique namespace (deleted afterwards)."""
    made = []

    def make(label=""):
        base = _slug(label or request.node.name, 40)
        name = f"t-{base}-{uuid.uuid4().hex[:6]}"
        kube_admin.create_namespace(name)
        made.append(name)
        return name

    yield make
    for name in made:
        kube_admin.delete_namespace(name)


@pytest.fixture
def ns(make_ns):
    """A unique namespace for this test."""
    return make_ns()


@dataclass
class Caller:
    """A workload: ServiceAccount ns/sa in the cluster with its SPIFFE client
    certificate."""
    ns: str
    sa: str
    cert: object
    kube: KubeClient

    @property
    def username(self):
        return sa_username(self.ns, self.sa)

    def grant(self, *secret_names, ns=None):
        """Lets this caller get the named secrets (all if none) in ns
        (default: its own). Returns the RoleBinding name."""
        return self.kube.grant_secret_read(ns or self.ns, self.sa, secret_names or None,
                                           sa_ns=self.ns)

    def client(self, broker, timeout=15):
        return broker.client(self.cert, timeout)


@pytest.fixture
def make_caller(kube_admin, pki):
    """make_caller(ns, sa='app') -> Caller (ServiceAccount created)."""
    def make(ns, sa="app"):
        kube_admin.create_service_account(ns, sa)
        return Caller(ns, sa, pki.client(ns, sa), kube_admin)
    return make


@pytest.fixture(scope="session")
def broker_binary():
    return Path(os.environ.get("SB_BROKER") or REPO / "build" / "secrets-broker")


@pytest.fixture
def start_broker(request, run, log_dir, pki, broker_binary):
    """start_broker(env=None, kube='kubeconfig'|'incluster'|None,
    via_kube_proxy=False, aws=True, wait=True, check_exit=True, timeout=None,
    binary=None) -> Broker.

    env overrides the defaults (None deletes a variable); kube=None and
    aws=False leave those settings out; wait=False returns at once (for a
    broker expected to refuse its configuration: see Broker.wait_exit). The broker is
    stopped after the test; a sanitizer report in its stderr, or (with
    check_exit) a non-zero exit status after SIGTERM, fails the test."""
    started = []
    test_dir = log_dir / "broker" / _slug(request.node.name, 90)

    def start(env=None, kube="kubeconfig", via_kube_proxy=False, aws=True, wait=True,
              check_exit=True, timeout=None, binary=None):
        bdir = test_dir / f"{len(started) + 1}"
        bdir.mkdir(parents=True, exist_ok=True)
        kubeconfig, incluster, aws_env = None, None, None
        if kube:
            ident = request.getfixturevalue("broker_identity")
            server = None
            if via_kube_proxy:
                server = request.getfixturevalue("kube_proxy").url
            if kube == "incluster":
                port = server.rsplit(":", 1)[1] if server else None
                incluster, _ = ident.incluster(port=port)
            else:
                kubeconfig = ident.write_kubeconfig(
                    run.run_dir / f"broker-{uuid.uuid4().hex[:8]}.kubeconfig", server=server)
        if aws:
            peer = request.getfixturevalue("aws")
            aws_env = peer.broker_env(request.getfixturevalue("broker_aws_keys"))
        env = base_env(pki, bdir, kubeconfig, incluster, aws_env, env)
        broker = Broker(binary or broker_binary, env, bdir, run, pki.ca_bundle)
        broker.check_exit = check_exit
        started.append(broker)
        try:
            broker.start(wait=wait, timeout=timeout)
        except procs.StartupError as e:
            pytest.fail(str(e), pytrace=False)
        return broker

    yield start
    problems = []
    for broker in started:
        status = broker.stop()
        reports = broker.sanitizer_reports()
        if reports:
            problems.append(f"{broker.stderr_path}: sanitizer report ({', '.join(reports)})")
        elif broker.check_exit and status not in (0, None):
            problems.append(f"{broker.stderr_path}: exit status {status} after SIGTERM")
    if problems:
        pytest.fail("broker teardown:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def broker(start_broker):
    """A broker with the default configuration (Kubernetes via kubeconfig,
    AWS via the moto proxy with static keys), ready."""
    return start_broker()


def pytest_runtest_call(item):
    cfg = item.config
    if not getattr(cfg, "_sb_first_test_seen", False):
        cfg._sb_first_test_seen = True
        cfg._sb_first_test_at = time.monotonic()


def pytest_terminal_summary(terminalreporter, config):
    first = getattr(config, "_sb_first_test_at", None)
    if first is None:
        return
    started = ", ".join(f"{k} {v:.1f}s" for k, v in _STARTUP.items()) or "none"
    terminalreporter.write_line(
        f"secrets-broker: first test body at {first - _T0:.1f}s; peers started: {started}; "
        f"logs in {_log_root()}")

