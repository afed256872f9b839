"""Audit log, metrics and logs against the real API server (issue 5): one
valid audit line per request of every outcome, whatever the client sends;
rotation under load loses and duplicates nothing; an unwritable audit log
fails closed and /readyz says why; the metrics page parses with
Prometheus's own parser and moves as expected, with a fixed set of series;
JSON logs at every level; and docs/observability.md names what the broker
really emits. Every secret value is a canary (see plugins/outputs.py for
how metrics and error bodies reach the session-end canary scan)."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import rawhttp
from harness.proxy import Hang, Respond
from harness.wait import eventually

REPO = Path(__file__).resolve().parents[2]
K8S_ONLY = {"SECRETS_BACKEND": "k8s"}
N = 3  # requests of each outcome

AUDIT_KEYS = {"ts", "seq", "request_id", "caller", "request", "response", "decision", "reason",
              "duration_ms"}
CALLER_KEYS = {"service_account", "namespace", "pod", "pod_uid", "cert_serial",
               "identity_source"}
REQUEST_KEYS = {"method", "path", "secret_name", "namespace", "key", "version_stage",
                "version_id", "refresh", "batch_items"}
RESPONSE_KEYS = {"status_code", "backend", "cache_hit", "version"}
ITEM_KEYS = {"index", "secret_name", "namespace", "key", "status_code", "backend", "cache_hit",
             "decision", "reason", "version"}
ADR_METRICS = {  # family name as prometheus_client reports it -> type
    "secrets_broker_requests": "counter",
    "secrets_broker_requests_duration_seconds": "histogram",
    "secrets_broker_cache_hits": "counter",
    "secrets_broker_cache_misses": "counter",
    "secrets_broker_backend_errors": "counter",
    "secrets_broker_secrets_fetched": "counter",
}
LEVELS = {"debug", "info", "warn", "error"}


# Helpers.


def wait_rbac(kube_admin, caller, ns, name, allowed=True):
    """RBAC changes reach the authorizer through an informer; a request made
    before would be denied (and the denial cached), spoiling exact counts."""
    def settled():
        review = kube_admin.subject_access_review(caller.ns, caller.sa, "get", "secrets",
                                                  name=name, namespace=ns)
        return review.get("allowed", False) == allowed
    assert eventually(settled), f"RBAC for {caller.username} on {ns}/{name} never settled"


def audit_lines(path):
    """The audit file's lines, each checked to be one whole JSON object of
    printable ASCII, parsed."""
    data = Path(path).read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the last audit line is not whole"
    out = []
    for line in data.split(b"\n")[:-1]:
        assert all(0x20 <= b < 0x7f for b in line), f"non-ASCII or control byte in {line!r}"
        rec = json.loads(line)
        assert isinstance(rec, dict)
        out.append(rec)
    return out


def check_schema(rec):
    """Every key of docs/observability.md's record format, and their types."""
    assert set(rec) - {"items"} == AUDIT_KEYS, rec
    assert set(rec["caller"]) == CALLER_KEYS
    assert set(rec["request"]) == REQUEST_KEYS
    assert set(rec["response"]) == RESPONSE_KEYS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
    assert isinstance(rec["seq"], int) and rec["seq"] >= 1
    assert re.fullmatch(r"[0-9a-f]{32}", rec["request_id"])
    assert isinstance(rec["duration_ms"], float) and rec["duration_ms"] >= 0
    assert rec["decision"] in ("allow", "deny", "none")
    assert isinstance(rec["response"]["status_code"], int)
    assert isinstance(rec["response"]["cache_hit"], bool)
    assert isinstance(rec["request"]["refresh"], bool)
    assert ("items" in rec) == (rec["request"]["batch_items"] is not None)
    for i, item in enumerate(rec.get("items", [])):
        assert set(item) == ITEM_KEYS and item["index"] == i


def ts_seconds(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


def metric(samples, name, **labels):
    """The sum of the series of `name` whose labels include `labels`."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and all((k, str(w)) in lab for k, w in labels.items()))


def log_lines(broker):
    """stderr's lines, every one of which must be a JSON object (the first
    is the harness's own "# argv" header)."""
    lines = broker.stderr().splitlines()
    assert lines and lines[0].startswith("# "), lines[:1]
    out = []
    for line in lines[1:]:
        rec = json.loads(line)
        assert isinstance(rec, dict), line
        out.append(rec)
    return out


def reopen_audit(broker):
    """SIGHUP, then wait for the broker to say it reopened the audit log."""
    def reopens():
        return sum(1 for r in broker.log_records() if r.get("msg", "").startswith(
            ("audit log reopened", "cannot reopen the audit log")))
    before = reopens()
    broker.signal(signal.SIGHUP)
    assert eventually(lambda: reopens() > before, timeout=5), "no reopen after SIGHUP"


def readyz(broker):
    r = broker.readyz()
    return r.status_code, r.json()


@pytest.fixture
def granted(make_ns, make_caller, kube_admin, canaries):
    """A namespace with secret db (keys p and u), and caller app allowed to
    read db and missing (which does not exist): (ns, app, value of p)."""
    ns = make_ns()
    value = canaries.make("obs-db")
    kube_admin.create_secret(ns, "db", string_data={"p": value, "u": canaries.make("obs-u")})
    app = make_caller(ns, "app")
    app.grant("db", "missing")
    wait_rbac(kube_admin, app, ns, "db")
    return ns, app, value


@pytest.fixture
def reader(start_broker, granted):
    """A Kubernetes-only broker and `granted`: (broker, ns, app, value)."""
    return (start_broker(aws=False, env=K8S_ONLY),) + granted


# Audit: completeness.

def test_one_valid_record_per_request_of_every_outcome(reader, make_caller, pki, kube_admin):
    broker, ns, app, value = reader
    stranger = make_caller(ns, "stranger")
    c = app.client(broker)
    foreign = pki.bad("wrong_trust_domain", ns, "app")
    nobody = broker.client(foreign)
    ctx = rawhttp.tls_context(pki.ca_bundle, app.cert)
    big = b"[" + b" " * (200 * 1024) + b"]"
    long_target = b"/v1/secrets/" + b"a" * 5000

    def api(reply):
        return reply.status, reply.request_id

    def raw(data):
        status, headers, _ = rawhttp.request(broker.port, ctx, data)
        return status, headers.get("x-request-id")

    outcomes = {  # label -> (status, request)
        "read": (200, lambda: api(c.secret("db"))),
        "key": (200, lambda: api(c.secret("db", "p"))),
        "batch": (200, lambda: api(c.batch([{"name": "db", "key": "u"}, {"name": "missing"},
                                            {"name": "db", "key": "nokey"},
                                            {"name": "private"}]))),
        "bad": (400, lambda: api(c.get("/v1/secrets/BAD"))),
        "anonymous": (401, lambda: api(nobody.secret("db"))),
        "denied": (403, lambda: api(stranger.client(broker).secret("db"))),
        "missing": (404, lambda: api(c.secret("missing"))),
        "method": (405, lambda: raw(b"PUT /v1/secrets/db HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 0\r\n\r\n")),
        "large": (413, lambda: raw(b"POST /v1/secrets/batch HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(big) + big)),
        "long": (414, lambda: raw(b"GET " + long_target + b" HTTP/1.1\r\nHost: x\r\n\r\n")),
    }
    t0 = time.time()
    sent = {}  # request id -> label
    for label, (status, call) in outcomes.items():
        for _ in range(N):
            got, rid = call()
            assert got == status, (label, got)
            assert rid and rid not in sent
            sent[rid] = label
    t1 = time.time()

    records = audit_lines(broker.audit_path)
    assert len(records) == len(outcomes) * N
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    by_id = {r["request_id"]: r for r in records}
    assert set(by_id) == set(sent)

    serial = {"app": app.cert.cert.serial_number, "stranger": stranger.cert.cert.serial_number}
    seen = {label: [] for label in outcomes}
    for rid, label in sent.items():
        rec = by_id[rid]
        check_schema(rec)
        seen[label].append(rec)
        assert rec["response"]["status_code"] == outcomes[label][0]
        assert t0 - 1 <= ts_seconds(rec["ts"]) <= t1 + 1
        caller = rec["caller"]
        if label == "anonymous":
            # Verified, but naming no usable identity: only the serial.
            assert int(caller.pop("cert_serial"), 16) == foreign.cert.serial_number
            assert set(caller.values()) == {None}
            continue
        # Every other request came with a verified certificate: its record
        # names the caller, refusals before identification included.
        assert caller["namespace"] == ns and caller["identity_source"] == "spiffe"
        assert caller["service_account"] == ("stranger" if label == "denied" else "app")
        assert int(caller["cert_serial"], 16) == serial[caller["service_account"]]
        assert caller["pod"] is None and caller["pod_uid"] is None

    for rec in seen["read"] + seen["key"] + seen["missing"] + seen["denied"]:
        want = "missing" if rec in seen["missing"] else "db"
        assert rec["request"]["secret_name"] == want and rec["request"]["namespace"] == ns
    for rec in seen["read"] + seen["key"]:
        assert rec["decision"] == "allow" and rec["response"]["backend"] == "kubernetes"
        assert rec["response"]["version"] and isinstance(rec["reason"], str)
    assert [r["response"]["cache_hit"] for r in seen["read"]] == [False, True, True]
    assert all(r["request"]["key"] == "p" and r["response"]["cache_hit"] for r in seen["key"])
    assert all(r["decision"] == "allow" and r["reason"] == "not_found" for r in seen["missing"])
    assert all(r["decision"] == "deny" and r["reason"] == "forbidden" for r in seen["denied"])
    reasons = {"bad": "bad_request", "anonymous": "unauthorized", "method": "method_not_allowed",
               "large": "payload_too_large", "long": "uri_too_long"}
    for label, reason in reasons.items():
        for rec in seen[label]:
            assert rec["decision"] == "none" and rec["reason"] == reason, rec
            assert rec["response"]["backend"] is None
    assert all(r["request"]["method"] == "PUT" for r in seen["method"])
    for rec in seen["long"]:  # cut at 2048 bytes of input
        assert rec["request"]["path"] == long_target[:2048].decode()

    for rec in seen["batch"]:
        assert rec["request"]["batch_items"] == 4 and rec["decision"] == "none"
        items = rec["items"]
        # Item reasons read like single requests': an error's code.
        assert [(i["secret_name"], i["key"], i["status_code"], i["decision"], i["reason"])
                for i in items[1:]] == [("missing", None, 404, "allow", "not_found"),
                                        ("db", "nokey", 404, "allow", "not_found"),
                                        ("private", None, 403, "deny", "forbidden")]
        assert (items[0]["secret_name"], items[0]["key"], items[0]["status_code"]) == (
            "db", "u", 200)
        assert all(i["namespace"] == ns for i in items)
        assert items[0]["decision"] == "allow" and items[0]["backend"] == "kubernetes"
        assert items[0]["version"]
    for rec in seen["large"]:  # refused whole: no items were read
        assert rec["request"]["batch_items"] == 0 and rec["items"] == []

    text = broker.audit_path.read_text()
    assert value not in text


def test_rate_limited_requests_are_audited(start_broker, ns, make_caller, kube_admin, canaries):
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make("rate")})
    app = make_caller(ns)
    app.grant("db")
    wait_rbac(kube_admin, app, ns, "db")
    broker = start_broker(aws=False, env={**K8S_ONLY, "RATE_LIMIT_PER_SECOND": "1",
                                          "RATE_LIMIT_BURST": "1"})
    c = app.client(broker)
    replies = [c.secret("db") for _ in range(10)]
    limited = [r for r in replies if r.status == 429]
    assert limited, [r.status for r in replies]
    by_id = {r["request_id"]: r for r in audit_lines(broker.audit_path)}
    assert len(by_id) == len(replies)
    for r in limited:
        rec = by_id[r.request_id]
        check_schema(rec)
        assert rec["response"]["status_code"] == 429 and rec["reason"] == "rate_limited"
        assert rec["caller"]["service_account"] == "app"
        assert r.headers.get("Retry-After")
    assert metric(broker.metrics(), "secrets_broker_rate_limited_total") == len(limited)


HOSTILE = [
    # Targets: quotes, backslash, control bytes, DEL, bytes above 0x7f,
    # percent-encoded newline and quote in the query.
    b'GET /v1/secrets/a"b HTTP/1.1\r\nHost: x\r\n\r\n',
    b"GET /v1/secrets/a\\b\\\\ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/secrets/a\x01b\x1bc\x7fd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/secrets/\xff\xfe\xc3\xa9\xe2\x80\xa8x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/secrets/db?namespace=a%22b%0Ac%0D%00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b'GET /v1/secrets/db/k"}{"forged":1 HTTP/1.1\r\nHost: x\r\n\r\n',
    # A method with a quote and a control byte.
    b'G"E\x01T /v1/secrets/db HTTP/1.1\r\nHost: x\r\n\r\n',
    # Headers: quotes and control bytes, a client X-Request-Id that tries to
    # end the line, a bare CR, NUL, obs-fold continuation.
    b'GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nUser-Agent: q"\\\x7f\xff\x01\r\n\r\n',
    b'GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nX-Request-Id: a"}\\n{"seq":0\r\n\r\n',
    b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n",
    b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b'GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b"c\r\n\r\n',
]


def _batch(items):
    body = json.dumps({"secrets": items}).encode()
    return (b"POST /v1/secrets/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


HOSTILE += [
    # Names and keys with quotes, newlines and control characters in a
    # batch body (after JSON decoding they are raw bytes).
    _batch([{"name": 'a"b\nc\u0001d'}]),
    _batch([{"name": "db", "key": 'k"\n\u0002'}]),
    _batch([{"name": "db", "namespace": 'x"\ny\u0000'}]),
    _batch([{"name": "db", "key": "u"}, {"name": "db\u2028"}]),
]


@pytest.mark.asan
def test_hostile_text_gives_one_valid_line_each(reader, pki):
    broker, ns, app, value = reader
    ctx = rawhttp.tls_context(pki.ca_bundle, app.cert)
    answered = []
    for data in HOSTILE:
        before = len(audit_lines(broker.audit_path))
        status, headers, body = rawhttp.request(broker.port, ctx, data)
        records = audit_lines(broker.audit_path)
        assert len(records) == before + 1, data
        rec = records[-1]
        check_schema(rec)
        assert rec["request_id"] == headers["x-request-id"]  # the broker's own id
        assert rec["response"]["status_code"] == status
        assert rec["caller"]["service_account"] == "app"
        method, target = data.split(b"\r\n", 1)[0].rsplit(b" ", 1)[0].split(b" ", 1)
        # The escapes are lossless: every byte as received, as \u00XX.
        assert rec["request"]["method"].encode("latin-1") == method
        assert rec["request"]["path"].encode("latin-1") == target
        answered.append((status, headers["x-request-id"], method))

    assert value not in broker.audit_path.read_text()
    logs = log_lines(broker)  # every stderr line still parses
    answers = [r["msg"] for r in logs if r.get("module") == "api" and "answered" in r["msg"]]
    for status, rid, method in answered:
        assert f"{method.decode('latin-1')} answered {status}" in answers


# Audit: rotation.

@pytest.mark.asan
def test_rotation_under_load_loses_and_duplicates_nothing(reader, make_caller):
    broker, ns, app, value = reader
    stranger = make_caller(ns, "stranger")
    audit = Path(broker.audit_path)
    rotated = audit.with_name("audit.log.1")
    archive = audit.parent / "rotated"
    archive.mkdir()
    stop = threading.Event()
    answered = []
    errors = []
    progress = {"n": 0}
    lock = threading.Lock()

    def hammer(caller, name):
        client = caller.client(broker, timeout=30)
        count = 0
        try:
            while not stop.is_set():
                client.secret(name)
                count += 1
                with lock:
                    progress["n"] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        answered.append(count)

    def answered_since(mark, at_least=8):
        """Every rotation happens under load, however slow the build."""
        return eventually(lambda: progress["n"] - mark >= at_least or errors, timeout=30,
                          interval=0.005)

    assert app.client(broker).secret("db").status == 200  # warm the cache
    workers = [threading.Thread(target=hammer, args=(who, name)) for who, name in
               [(app, "db"), (app, "db"), (app, "missing"), (stranger, "db")]]
    for w in workers:
        w.start()
    try:
        for i in range(50):
            mark = progress["n"]
            assert answered_since(mark) and not errors
            os.rename(audit, rotated)  # mv audit.log audit.log.1
            broker.signal(signal.SIGHUP)
            assert eventually(audit.exists, timeout=5), "SIGHUP made no new audit.log"
            os.rename(rotated, archive / f"audit.log.{i + 1:02d}")
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert not errors, errors[:3]

    total = 1 + sum(answered)
    files = sorted(archive.iterdir()) + [audit]
    seqs = []
    for f in files:
        numbers = [r["seq"] for r in audit_lines(f)]
        # Each file holds one run of consecutive numbers, after the previous one.
        if numbers:
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f
        seqs += numbers
    assert sorted(seqs) == list(range(1, total + 1)), (len(seqs), total)
    assert seqs == sorted(seqs)
    assert total > 50 * 8
    logs = [r["msg"] for r in broker.log_records()]
    assert eventually(lambda: [r["msg"] for r in broker.log_records()].count(
        "audit log reopened") == 50, timeout=5)
    assert not any(m.startswith("cannot reopen") for m in logs)


# Audit: an unwritable log.

def _break_audit_log(broker):
    """Points AUDIT_LOG_PATH at /dev/full (ENOSPC on every write) and
    reopens; returns the old file, now audit.log.1."""
    audit = Path(broker.audit_path)
    old = audit.with_name("audit.log.1")
    os.rename(audit, old)
    os.symlink("/dev/full", audit)
    reopen_audit(broker)
    return old


@pytest.mark.asan
def test_unwritable_audit_log_fails_closed(reader, make_caller):
    broker, ns, app, value = reader
    stranger = make_caller(ns, "stranger").client(broker)
    c = app.client(broker)
    assert c.secret("db").status == 200  # the value is cached: only the audit can fail
    written = len(audit_lines(broker.audit_path))
    failures = metric(broker.metrics(), "secrets_broker_audit_write_failures_total")

    old = _break_audit_log(broker)
    replies = [c.secret("db"), c.secret("db", "p"), c.batch([{"name": "db"}]),
               stranger.secret("db")]
    for r in replies:
        assert r.status == 503, r
        assert value.encode() not in r.body
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert r.json()["error"]["request_id"] == r.request_id
    samples = broker.metrics()
    assert metric(samples, "secrets_broker_audit_write_failures_total") == failures + 4
    assert metric(samples, "secrets_broker_requests_total", code="503") == 4
    status, body = readyz(broker)
    assert status == 503 and body["status"] == "unavailable"
    assert body["checks"]["audit"] == "audit log: no space left on device"
    assert len(audit_lines(old)) == written  # nothing went to the old file
    errors = {r.get("request_id") for r in broker.log_records()
              if r["level"] == "error" and r["module"] == "audit"}
    assert {r.request_id for r in replies} <= errors

    # Fixed and SIGHUP: ready again, and the gap in seq shows the 4 lost records.
    Path(broker.audit_path).unlink()
    reopen_audit(broker)
    assert readyz(broker)[0] == 200
    assert c.secret("db").status == 200
    (rec,) = audit_lines(broker.audit_path)
    assert rec["seq"] == written + 4 + 1


@pytest.mark.asan
def test_full_file_system_fails_closed_and_heals_by_itself(start_broker, granted, tmp_path):
    ns, app, value = granted
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                          str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        broker = start_broker(aws=False, env={**K8S_ONLY, "AUDIT_LOG_PATH": mnt / "audit.log"})
        c = app.client(broker)
        # Fill the file system before the first record: a record would
        # otherwise still fit in the audit file's last page.
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        replies = [c.secret("db") for _ in range(3)]
        assert [r.status for r in replies] == [503] * 3
        assert all(value.encode() not in r.body for r in replies)
        status, body = readyz(broker)
        assert status == 503 and body["checks"]["audit"] == "audit log: no space left on device"

        # Space comes back: ready again without a request or a signal (a pod
        # out of its Service would get neither).
        (mnt / "filler").unlink()
        assert eventually(lambda: readyz(broker)[0] == 200, timeout=3)
        assert c.secret("db").status == 200
        # The refused requests used up seq 1-3: the gap shows them.
        assert [r["seq"] for r in audit_lines(mnt / "audit.log")] == [4]
        shutil.copy(mnt / "audit.log", broker.log_dir / "audit-tmpfs.log")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.asan
def test_fail_open_serves_and_stays_ready(start_broker, ns, make_caller, kube_admin, canaries):
    value = canaries.make("open")
    kube_admin.create_secret(ns, "db", string_data={"p": value})
    app = make_caller(ns)
    app.grant("db")
    wait_rbac(kube_admin, app, ns, "db")
    broker = start_broker(aws=False, env={**K8S_ONLY, "AUDIT_FAILURE_MODE": "open"})
    c = app.client(broker)
    assert c.secret("db").status == 200

    _break_audit_log(broker)
    replies = [c.secret("db", "p") for _ in range(3)]
    assert all(r.status == 200 and r.body == value.encode() for r in replies)
    assert metric(broker.metrics(), "secrets_broker_audit_write_failures_total") == 3
    status, body = readyz(broker)
    assert status == 200 and body["status"] == "ok"
    assert body["checks"]["audit"] == "audit log: no space left on device"
    # The log is the only trace of these reads.
    errors = [r for r in broker.log_records() if r["level"] == "error"]
    assert {r.request_id for r in replies} <= {r.get("request_id") for r in errors}
    assert value not in broker.stderr()


# Metrics.

@pytest.fixture(scope="session")
def promlint(tmp_path_factory):
    """tests/integration/promlint built once (Prometheus's text parser and
    the lint rules of `promtool check metrics`), or None without Go."""
    src = Path(__file__).parent / "promlint"
    go = shutil.which("go")
    if not go:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "secrets-broker"
    key = hashlib.sha256(b"".join((src / f).read_bytes() for f in ("go.mod", "go.sum",
                                                                     "main.go"))).hexdigest()
    binary = cache / f"promlint-{key[:16]}" / "promlint"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
        out = subprocess.run([go, "build", "-o", str(binary), "."], cwd=src, env=env,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            return None
    return binary


def test_metrics_page_parses_and_lints(reader, promlint):
    broker, ns, app, value = reader
    c = app.client(broker)
    for _ in range(3):
        c.secret("db")
    c.secret("missing")
    c.get("/v1/secrets/BAD")
    r = broker.ops_get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.body.decode("utf-8")
    assert text.endswith("\n") and value not in text

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in ADR_METRICS.items():
        assert families[name].type == kind, name
    series = set()
    for fam in families.values():
        assert fam.type in ("counter", "gauge", "histogram"), fam.name
        assert fam.documentation, f"{fam.name} has no HELP"
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in series, f"duplicate series {key}"
            series.add(key)
            assert s.value >= 0 or fam.type == "gauge"
    for fam in (f for f in families.values() if f.type == "histogram"):
        for ep in {s.labels["endpoint"] for s in fam.samples}:
            mine = [s for s in fam.samples if s.labels.get("endpoint") == ep]
            buckets = [s.value for s in mine if s.name.endswith("_bucket")]
            count = [s.value for s in mine if s.name.endswith("_count")]
            assert buckets == sorted(buckets) and buckets[-1] == count[0]
            assert [s.labels["le"] for s in mine if s.name.endswith("_bucket")][-1] == "+Inf"
    hist = families["secrets_broker_requests_duration_seconds"]
    counts = {s.labels["endpoint"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert counts["secret"] == 4 and counts["other"] == 1  # BAD is refused before routing

    if promlint is None:
        pytest.skip("no Go toolchain (or no module proxy) to build tests/integration/promlint; "
                    "the prometheus_client parser checks above passed")
    out = subprocess.run([str(promlint)], input=r.body, capture_output=True, timeout=60)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def test_adr_metrics_follow_hits_misses_and_errors(start_broker, ns, make_caller, kube_admin,
                                                   canaries, kube_proxy):
    for name in ("db", "down", "slow"):
        kube_admin.create_secret(ns, name, string_data={"p": canaries.make(f"m-{name}")})
    app = make_caller(ns)
    app.grant("db", "down", "slow")
    wait_rbac(kube_admin, app, ns, "slow")
    broker = start_broker(aws=False, via_kube_proxy=True,
                          env={**K8S_ONLY, "K8S_TIMEOUT_SECONDS": "1"})
    c = app.client(broker)
    k8s = {"backend": "kubernetes"}

    def delta(before, after, name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    m0 = broker.metrics()
    assert c.secret("db").status == 200  # a miss, read from the API server
    m1 = broker.metrics()
    assert delta(m0, m1, "secrets_broker_cache_misses_total", **k8s) == 1
    assert delta(m0, m1, "secrets_broker_secrets_fetched_total", **k8s) == 1
    assert delta(m0, m1, "secrets_broker_cache_hits_total") == 0
    assert delta(m0, m1, "secrets_broker_requests_total", endpoint="secret", code="200") == 1
    assert delta(m0, m1, "secrets_broker_requests_duration_seconds_count",
                 endpoint="secret") == 1
    assert delta(m0, m1, "secrets_broker_requests_duration_seconds_sum", endpoint="secret") > 0

    assert c.secret("db").status == 200  # a hit
    m2 = broker.metrics()
    assert delta(m1, m2, "secrets_broker_cache_hits_total", **k8s) == 1
    assert delta(m1, m2, "secrets_broker_cache_misses_total") == 0
    assert delta(m1, m2, "secrets_broker_secrets_fetched_total") == 0
    assert delta(m1, m2, "secrets_broker_requests_total", endpoint="secret", code="200") == 1

    # The API server fails the read (503), then does not answer in time.
    mark = kube_proxy.mark()
    rules = [kube_proxy.add_rule(Respond(503, b'{"kind":"Status","code":503}'),
                                 path_re=f"/namespaces/{ns}/secrets/down$"),
             kube_proxy.add_rule(Hang(5), path_re=f"/namespaces/{ns}/secrets/slow$")]
    try:
        down = c.secret("down")
        m3 = broker.metrics()
        slow = c.secret("slow")
        m4 = broker.metrics()
    finally:
        for rule in rules:
            kube_proxy.remove_rule(rule)
    assert down.status in (502, 503) and slow.status in (503, 504), (down, slow)
    calls = kube_proxy.count(since=mark, path_re=f"/namespaces/{ns}/secrets/down$")
    assert calls >= 1
    assert delta(m2, m3, "secrets_broker_backend_errors_total", **k8s) == 1  # per fetch
    assert delta(m2, m3, "secrets_broker_backend_errors_total", reason="unavailable") >= 1
    assert delta(m3, m4, "secrets_broker_backend_errors_total", reason="timeout") >= 1
    assert delta(m2, m4, "secrets_broker_secrets_fetched_total") == 0
    assert delta(m2, m3, "secrets_broker_requests_total", endpoint="secret",
                 code=str(down.status)) == 1
    assert delta(m3, m4, "secrets_broker_requests_total", endpoint="secret",
                 code=str(slow.status)) == 1
    by_id = {r["request_id"]: r for r in broker.audit_records()}
    assert by_id[down.request_id]["response"]["status_code"] == down.status
    assert by_id[slow.request_id]["response"]["status_code"] == slow.status


def test_names_and_identities_add_no_series(reader, make_caller):
    broker, ns, app, value = reader
    before = broker.metrics()
    callers = [make_caller(ns, f"card-{i:02d}") for i in range(20)]
    clients = [c.client(broker) for c in callers]
    names = [f"card-secret-{i:03d}" for i in range(200)]
    statuses = {clients[i % 20].secret(name).status for i, name in enumerate(names)}
    assert statuses == {403}
    after = broker.metrics()
    assert set(after) == set(before)
    assert metric(after, "secrets_broker_requests_total", code="403") == 200
    labels = {v for (_, lab) in after for (_, v) in lab}
    words = set(names) | {c.sa for c in callers} | {ns}
    assert not labels & words


# Logs.

def test_log_lines_are_json_with_module_and_request_id(reader, make_caller, pki):
    broker, ns, app, value = reader
    c = app.client(broker)
    replies = [c.secret("db"), c.secret("missing"), c.get("/v1/secrets/BAD"),
               make_caller(ns, "stranger").client(broker).secret("db")]
    ctx = rawhttp.tls_context(pki.ca_bundle, app.cert)
    status, headers, _ = rawhttp.request(
        broker.port, ctx, b'G"E\x01T /v1/secrets/db HTTP/1.1\r\nHost: x\r\n\r\n')
    assert status == 405
    ids = [r.request_id for r in replies] + [headers["x-request-id"]]

    logs = log_lines(broker)
    for rec in logs:
        assert rec["level"] in LEVELS and rec["module"] and isinstance(rec["msg"], str), rec
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
        if rec["module"] == "api":
            assert rec.get("request_id"), rec  # request-scoped
    for rid in ids:
        assert any(r.get("request_id") == rid for r in logs), rid
    assert any(r["msg"] == 'G"E\x01T answered 405' for r in logs)  # escaped, not forged
    assert value not in broker.stderr()


def test_start_up_line_has_version_and_configuration_and_no_secret(start_broker,
                                                                  broker_binary):
    broker = start_broker()  # Kubernetes and AWS, static AWS keys
    version = subprocess.run([str(broker_binary), "--version"], capture_output=True,
                             text=True).stdout.split()[1]
    starts = [r for r in log_lines(broker) if r["msg"] == "secrets-broker starting"]
    assert len(starts) == 1
    s = starts[0]
    assert s["level"] == "info" and s["module"] == "main"
    assert s["version"] == version
    assert s["backends"] == "kubernetes,aws-secrets-manager"
    assert (s["port"], s["ops_port"]) == (broker.port, broker.ops_port)
    assert s["mtls"] is True and s["audit"] is True and s["audit_fail_open"] is False
    assert s["log_level"] == "debug" and s["workers"] == 2 and s["cache"] is True
    assert s["trust_domain"] == broker.env["SPIFFE_TRUST_DOMAIN"]

    text = broker.stderr()
    secrets = [broker.env["AWS_SECRET_ACCESS_KEY"], broker.env["AWS_ACCESS_KEY_ID"]]
    key_pem = Path(broker.env["MTLS_SERVER_KEY_PATH"]).read_text()
    secrets += [line for line in key_pem.splitlines() if not line.startswith("-----")]
    kubeconfig = Path(broker.env["KUBECONFIG"]).read_text()
    secrets += re.findall(r"token:\s*(\S+)", kubeconfig)
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("env,debug,info", [
    ({"LOG_LEVEL": "debug"}, True, True),
    ({"LOG_LEVEL": "info"}, False, True),
    ({"LOG_LEVEL": "warn"}, False, False),
    ({"LOG_LEVEL": "error", "DEBUG_MODE": "true"}, True, True),
])
def test_log_level_and_debug_mode(start_broker, ns, make_caller, env, debug, info):
    broker = start_broker(aws=False, env={**K8S_ONLY, **env})
    make_caller(ns).client(broker).secret("nope")
    levels = {r["level"] for r in log_lines(broker)}
    assert ("debug" in levels) == debug, levels
    assert ("info" in levels) == info, levels


# Documentation against the code.

def test_docs_name_every_metric_and_audit_field(reader):
    broker, ns, app, value = reader
    c = app.client(broker)
    c.secret("db")
    c.batch([{"name": "db"}])
    docs = (REPO / "docs/observability.md").read_text()

    text = broker.ops_get("/metrics").text
    names = {f.name + ("_total" if f.type == "counter" and not f.name.endswith("_total")
                       else "") for f in text_string_to_metric_families(text)}
    documented = set(re.findall(r"^\| `((?:secrets_broker|process)_[a-z_]+)` \|", docs, re.M))
    assert names == documented

    ours = [k for k in {(n, lab) for (n, lab) in broker.metrics()} if
            k[0].startswith("secrets_broker_")]
    stated = re.search(r"(\d+) `secrets_broker_\*` series", docs)
    assert stated and int(stated.group(1)) == len(ours)

    # The example alert rules and the dashboard query only what is exported.
    samples = {n for (n, _) in broker.metrics()}
    rules = yaml.safe_load(re.search(r"```yaml\n(apiVersion: monitoring.*?)```", docs,
                                     re.S).group(1))
    exprs = [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    exprs += _dashboard_exprs(json.loads((REPO / "docs/grafana-dashboard.json").read_text()))
    assert len(exprs) > 30
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        for name in re.findall(r"\b(?:secrets_broker|process)_[a-z_]+", expr):
            assert name in samples, f"{name} in {expr!r} is not exported"

    fields = re.findall(r"^\| `([a-z_.\[\]]+)`", docs, re.M)
    for rec in broker.audit_records():
        for key, val in rec.items():
            if isinstance(val, dict):
                for sub in val:
                    assert f"`{key}.{sub}`" in docs, f"{key}.{sub}"
            elif key == "items":
                assert "items[]" in fields
                for item_key in val[0]:
                    assert f"`{item_key}`" in docs
            else:
                assert key in fields, key


def _dashboard_exprs(node):
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [e for v in node.values() for e in _dashboard_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _dashboard_exprs(v)]
    return []


def test_outputs_reach_the_canary_scan(reader, log_dir):
    """plugins/outputs.py: error bodies, every scrape and a last scrape at
    stop land in the broker's log directory, which the canary scan reads."""
    broker, ns, app, value = reader
    c = app.client(broker)
    bad = c.get("/v1/secrets/BAD")
    c.batch([{"name": "db", "key": "u"}, {"name": "nope"}])
    broker.metrics()
    broker.stop()
    d = broker.log_dir
    assert d.is_relative_to(log_dir / "broker")
    errors = (d / "error-bodies.log").read_bytes()
    assert bad.body in errors and b"batch item errors" in errors
    assert b"# GET /metrics -> 200" in (d / "ops-responses.log").read_bytes()
    assert b"secrets_broker_requests_total" in (d / "metrics-at-stop.txt").read_bytes()
