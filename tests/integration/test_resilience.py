"""Resilience (issue 6, DESIGN.md sections 6 and 10) by fault injection
against the real peers: the API server paused with SIGSTOP (stale values
and stale decisions when allowed, 503 for everyone else within the
deadline, the breaker opening and closing again), the API server's 429
with Retry-After, moto throttling every call (at most three attempts a
request, no retry storm), per-identity rate limits, request deadlines,
the in-flight and connection caps, thousands of slow connections, and
SIGTERM under load. Every secret value is a canary.

Timing: the machine is shared and loaded. Bounds on time are generous and
checked one way (no faster than a wait the broker must honour, no slower
than a deadline plus slack); what is counted exactly is what the broker
decides (attempts, upstream calls, statuses)."""
import json
import signal
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from harness.proxy import Delay, Respond

K8S_ONLY = {"SECRETS_BACKEND": "k8s"}
AWS_ONLY = {"SECRETS_BACKEND": "aws-secrets-manager"}
JSON_11 = {"Content-Type": "application/x-amz-json-1.1"}
THROTTLED = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'


# Helpers.

def eventually(fn, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def wait_granted(kube_admin, ns, sa, *names, timeout=15):
    """Until the API server's authorizer lets ns/sa get each name."""
    until = time.monotonic() + timeout
    for name in names:
        while not kube_admin.subject_access_review(ns, sa, "get", "secrets", name)["allowed"]:
            assert time.monotonic() < until, f"RBAC for {ns}/{sa} on {name} never arrived"
            time.sleep(0.1)


def metric(broker, name, **labels):
    want = tuple(sorted(labels.items()))
    return broker.metrics().get((name, want), 0)


def breaker_state(broker, backend):
    return metric(broker, "secrets_broker_breaker_state", backend=backend)


def timed(fn):
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def secret_path_of(ns):
    return lambda rec: f"/namespaces/{ns}/secrets/" in rec.path


# The API server's 429 (API Priority and Fairness).

def test_kube_429_retry_after_is_waited_out(start_broker, make_ns, make_caller, kube_admin,
                                            kube_proxy, canaries):
    broker = start_broker(aws=False, via_kube_proxy=True,
                          env={**K8S_ONLY, "K8S_TIMEOUT_SECONDS": "6",
                               "REQUEST_TIMEOUT_SECONDS": "10"})
    ns = make_ns()
    value = canaries.make("apf")
    kube_admin.create_secret(ns, "db", string_data={"p": value})
    kube_admin.create_secret(ns, "later", string_data={"p": canaries.make("later")})
    app = make_caller(ns)
    app.grant("db", "later")
    wait_granted(kube_admin, ns, "app", "db", "later")
    client = app.client(broker, 30)
    status = b'{"kind":"Status","code":429,"reason":"TooManyRequests"}'

    rule = kube_proxy.add_rule(Respond(429, status, {"Retry-After": "2"}), times=1,
                               predicate=lambda rec: rec.path.endswith(f"/{ns}/secrets/db"))
    mark = kube_proxy.mark()
    try:
        r, took = timed(lambda: client.secret("db", "p"))
    finally:
        kube_proxy.remove_rule(rule)
    assert r.status == 200 and r.body == value.encode(), r
    reads = kube_proxy.requests(since=mark, path_re=f"/{ns}/secrets/db$")
    assert [x.status for x in reads] == [429, 200]
    # Retry-After: 2 was honoured (plus jitter), from the first answer.
    assert reads[1].started - reads[0].started >= 2.0
    assert took >= 2.0

    # Told to come back after the call's time is up: no retry, a 503 that
    # passes the delay on.
    rule = kube_proxy.add_rule(Respond(429, status, {"Retry-After": "30"}),
                               predicate=lambda rec: rec.path.endswith(f"/{ns}/secrets/later"))
    mark = kube_proxy.mark()
    try:
        r, took = timed(lambda: client.secret("later"))
    finally:
        kube_proxy.remove_rule(rule)
    assert r.status == 503 and r.json()["error"]["code"] == "backend_throttled", r
    assert r.headers.get("Retry-After") == "30"
    assert kube_proxy.count(since=mark, path_re=f"/{ns}/secrets/later$") == 1
    assert took < 5
