"""The RBAC-safe cache against a real API server (issue 4): a cached value is
never served to a caller RBAC has not allowed, revocation takes effect within
the allow TTL, concurrent misses make one read, `?refresh=true` bypasses the
cache but not authorization and is budgeted per caller, and (in
test_cache_watch.py and test_cache_property.py) watch invalidation and a
randomized property test. Every secret value is a canary."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.proxy import Delay
from harness.wait import eventually

K8S_ONLY = {"SECRETS_BACKEND": "k8s"}



def counter(broker, name):
    """The sum of a metric's series (e.g. over the backend label)."""
    return sum(v for (n, _), v in broker.metrics().items() if n == name)


def rbac_allows(kube_admin, caller, ns, name):
    status = kube_admin.subject_access_review(caller.ns, caller.sa, "get", "secrets", name=name,
                                              namespace=ns)
    return status.get("allowed", False)


def wait_rbac(kube_admin, caller, ns, name, allowed=True):
    assert eventually(lambda: rbac_allows(kube_admin, caller, ns, name) == allowed), \
        f"RBAC for {caller.username} on {ns}/{name} never became {allowed}"


def password(reply):
    assert reply.status == 200, reply
    return reply.json()["data"]["password"]


def audit_for(broker, request_id):
    return [r for r in broker.audit_records() if r.get("request_id") == request_id]


@pytest.mark.asan
def test_cross_tenant_read_is_refused_and_no_cache_hit_counted(
        start_broker, make_ns, make_caller, kube_admin, canaries):
    ns1, other = make_ns("ns1"), make_ns("tenant-b")
    a, b = make_caller(ns1, "a"), make_caller(other, "b")
    value = canaries.make("xtenant-db")
    kube_admin.create_secret(ns1, "db", string_data={"password": value})
    a.grant("db")
    wait_rbac(kube_admin, a, ns1, "db")
    broker = start_broker(env=K8S_ONLY, aws=False)
    ca, cb = a.client(broker), b.client(broker)

    assert password(ca.secret("db")) == value
    hit = ca.secret("db")
    assert password(hit) == value and hit.json()["cache_hit"] is True
    hits = counter(broker, "secrets_broker_cache_hits_total")

    # B has no RBAC at all: 403 however it asks, within the cache TTL, and
    # the cache is never consulted on its behalf.
    for params in ({"namespace": ns1}, {"namespace": ns1, "refresh": "true"},
                   {"namespace": ns1}):
        r = cb.secret("db", **params)
        assert r.status == 403, r
        assert value.encode() not in r.body
        assert counter(broker, "secrets_broker_cache_hits_total") == hits
        (rec,) = audit_for(broker, r.request_id)
        assert rec["decision"] == "deny" and rec["response"]["cache_hit"] is False

    # Authorization before existence: a name that exists nowhere is 403 too.
    assert cb.secret("nope", namespace=ns1).status == 403
    # A is still served from the cache.
    assert password(ca.secret("db")) == value
    assert counter(broker, "secrets_broker_cache_hits_total") == hits + 1


def test_revocation_takes_effect_within_the_allow_ttl(
        start_broker, ns, make_caller, kube_admin, canaries):
    a = make_caller(ns, "a")
    value = canaries.make("revoked-db")
    kube_admin.create_secret(ns, "db", string_data={"password": value})
    binding = a.grant("db")
    wait_rbac(kube_admin, a, ns, "db")
    broker = start_broker(env={**K8S_ONLY, "AUTHZ_ALLOW_TTL_SECONDS": "2",
                               "CACHE_TTL_SECONDS": "300"}, aws=False)
    client = a.client(broker)
    assert password(client.secret("db")) == value
    assert client.secret("db").json()["cache_hit"] is True

    kube_admin.delete_role_binding(ns, binding)
    kube_admin.delete_role(ns, binding)
    revoked_at = time.monotonic()
    statuses = []
    while time.monotonic() - revoked_at < 4.0:
        r = client.secret("db")
        statuses.append((time.monotonic() - revoked_at, r.status))
        if r.status == 200:
            assert password(r) == value
        time.sleep(0.05)

    first_403 = next((t for t, s in statuses if s == 403), None)
    assert first_403 is not None, statuses
    # The allow TTL (2 s) plus the API server's own RBAC informer delay.
    assert first_403 <= 2.0 + 0.5, statuses
    assert all(s == 403 for t, s in statuses if t >= first_403), statuses


@pytest.mark.asan
def test_concurrent_misses_make_one_read_and_a_denied_waiter_gets_403(
        start_broker, ns, make_ns, make_caller, kube, kube_admin, kube_proxy, canaries):
    a = make_caller(ns, "a")
    b = make_caller(make_ns("intruder"), "b")
    value = canaries.make("burst-db")
    kube_admin.create_secret(ns, "db", string_data={"password": value})
    a.grant("db")
    wait_rbac(kube_admin, a, ns, "db")
    broker = start_broker(env={**K8S_ONLY, "MAX_CONNECTIONS": "1000"}, via_kube_proxy=True,
                          aws=False)
    # A slow upstream read keeps the flight open while the burst arrives.
    rule = kube_proxy.add_rule(Delay(1.0), path_re=rf"/namespaces/{ns}/secrets/db$")
    mark = kube.audit.mark()

    n = 200
    clients = [a.client(broker, timeout=60) for _ in range(n)]
    intruder = b.client(broker, timeout=60)
    go = threading.Barrier(n + 1)

    def read(client):
        go.wait()
        return client.secret("db")

    def intrude():
        go.wait()
        time.sleep(0.3)
        return intruder.secret("db", namespace=ns)

    try:
        with ThreadPoolExecutor(max_workers=n + 1) as pool:
            denied = pool.submit(intrude)
            replies = list(pool.map(read, clients))
            denied = denied.result()
    finally:
        kube_proxy.remove_rule(rule)

    assert [r.status for r in replies] == [200] * n
    assert {password(r) for r in replies} == {value}
    assert denied.status == 403 and value.encode() not in denied.body
    reads = kube.audit.secret_reads(ns, "db", since=mark)
    assert len(reads) == 1, [(e["impersonatedUser"], e["responseStatus"]) for e in reads]
    assert reads[0]["impersonatedUser"]["username"] == a.username


def test_refresh_bypasses_the_cache_within_a_budget(
        start_broker, ns, make_caller, kube, kube_admin, canaries):
    a = make_caller(ns, "a")
    old, new = canaries.make("refresh-old"), canaries.make("refresh-new")
    kube_admin.create_secret(ns, "db", string_data={"password": old})
    a.grant("db")
    wait_rbac(kube_admin, a, ns, "db")
    broker = start_broker(env={**K8S_ONLY, "CACHE_TTL_SECONDS": "300",
                               "REFRESH_RATE_PER_MINUTE": "12"}, aws=False)
    client = a.client(broker)
    assert password(client.secret("db")) == old
    kube_admin.replace_secret(ns, "db", string_data={"password": new})
    assert password(client.secret("db")) == old  # cached, TTL 300 s

    mark = kube.audit.mark()
    r = client.secret("db", refresh="true")
    assert password(r) == new and r.json()["cache_hit"] is False
    assert password(client.secret("db")) == new  # the refresh refilled the cache

    # 12 a minute: a burst of 2. Over it, a refresh is a plain read (from the cache).
    r2 = client.secret("db", refresh="true")
    assert r2.json()["cache_hit"] is False
    r3 = client.secret("db", refresh="true")
    assert password(r3) == new and r3.json()["cache_hit"] is True
    (rec,) = audit_for(broker, r3.request_id)
    assert rec["reason"] == "refresh_limited"
    assert len(kube.audit.secret_reads(ns, "db", since=mark)) == 2


def test_a_cache_hit_without_a_fresh_decision_asks_the_api_server_first(
        start_broker, ns, make_caller, kube, kube_admin, canaries):
    a = make_caller(ns, "a")
    value = canaries.make("renewed-db")
    kube_admin.create_secret(ns, "db", string_data={"password": value})
    a.grant("db")
    wait_rbac(kube_admin, a, ns, "db")
    broker = start_broker(env={**K8S_ONLY, "AUTHZ_ALLOW_TTL_SECONDS": "1",
                               "CACHE_TTL_SECONDS": "300"}, aws=False)
    client = a.client(broker)
    assert password(client.secret("db")) == value
    time.sleep(1.2)  # the allow has expired; the value has not

    mark = kube.audit.mark()
    r = client.secret("db")
    assert password(r) == value and r.json()["cache_hit"] is True
    reviews = kube.audit.events(since=mark, verb="create", resource="subjectaccessreviews")
    assert len(reviews) == 1 and reviews[0]["auditID"] == r.request_id
    assert kube.audit.secret_reads(ns, "db", since=mark) == []


def test_not_found_is_cached_briefly_and_only_told_to_allowed_callers(
        start_broker, ns, make_ns, make_caller, kube, kube_admin):
    a = make_caller(ns, "a")
    b = make_caller(make_ns("other"), "b")
    a.grant("ghost")  # RBAC may name a secret that does not exist
    wait_rbac(kube_admin, a, ns, "ghost")
    broker = start_broker(env={**K8S_ONLY, "CACHE_NEGATIVE_TTL_SECONDS": "2"}, aws=False)
    ca, cb = a.client(broker), b.client(broker)

    mark = kube.audit.mark()
    storm = [ca.secret("ghost").status for _ in range(20)]
    assert storm == [404] * 20
    assert len(kube.audit.secret_reads(ns, "ghost", since=mark)) == 1
    # Authorization before existence: B is refused, not told it is missing.
    assert cb.secret("ghost", namespace=ns).status == 403
    # B's refusal is B's: A is still answered.
    assert ca.secret("ghost").status == 404

    time.sleep(2.2)  # past the negative TTL: asked again
    assert ca.secret("ghost").status == 404
    assert len(kube.audit.secret_reads(ns, "ghost", since=mark)) == 2


def test_cache_enabled_false_reads_every_time(start_broker, ns, make_caller, kube, kube_admin,
                                              canaries):
    a = make_caller(ns, "a")
    value = canaries.make("uncached-db")
    kube_admin.create_secret(ns, "db", string_data={"password": value})
    a.grant("db")
    wait_rbac(kube_admin, a, ns, "db")
    broker = start_broker(env={**K8S_ONLY, "CACHE_ENABLED": "false"}, aws=False)
    client = a.client(broker)

    mark = kube.audit.mark()
    for _ in range(3):
        r = client.secret("db")
        assert password(r) == value and r.json()["cache_hit"] is False
    assert len(kube.audit.secret_reads(ns, "db", since=mark)) == 3
    assert counter(broker, "secrets_broker_cache_entries") == 0
