"""Bearer tokens (DESIGN.md section 3, issue 3) against the real API server:
a caller's projected ServiceAccount token is checked with a TokenReview,
must name the certificate's ServiceAccount, and brings the pod into the
audit record; BEARER_TOKEN=required makes it mandatory; without mTLS (a
mesh in front) the token alone is the identity and forwarded-identity
headers count for nothing; a review that gets no answer is a 503."""
import socket
import threading
import uuid

import pytest
import requests

from harness.proxy import Delay, Hang, Reset, Respond

AUD = "secrets-broker"
REJECTIONS = ("secrets_broker_identity_rejections_total", (("reason", "token"),))


def bearer(token, scheme="Bearer"):
    return {"Authorization": f"{scheme} {token}"}


def token_rejections(broker):
    return broker.metrics().get(REJECTIONS, 0)


class Workload:
    """ServiceAccount `app` in its own namespace, allowed to read secret
    `db` (a canary), running in Pod `app-pod`; ServiceAccount `other` in
    the same namespace may read nothing."""

    def __init__(self, ns, kube_admin, make_caller, canaries):
        self.ns = ns
        self.kube = kube_admin
        self.password = canaries.make("bearer-db")
        kube_admin.create_secret(ns, "db", string_data={"password": self.password})
        self.app = make_caller(ns, "app")
        self.app.grant("db")
        self.other = make_caller(ns, "other")
        self.pod = kube_admin.create_pod(ns, "app-pod", "app")

    def token(self, sa="app", audience=AUD, pod=None):
        """A TokenRequest token of sa, bound to app-pod (by default when sa
        is app, the pod's account)."""
        bind = sa == "app" if pod is None else pod
        tok, _ = self.kube.token_request(self.ns, sa, audiences=[audience],
                                         expiration_seconds=600,
                                         bound_pod=self.pod if bind else None)
        return tok


@pytest.fixture
def work(ns, kube_admin, make_caller, canaries):
    return Workload(ns, kube_admin, make_caller, canaries)


def k8s_env(**extra):
    env = {"SECRETS_BACKEND": "k8s"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def assert_no_token_in_outputs(broker, *tokens):
    text = broker.stderr() + broker.audit_path.read_text(errors="replace")
    for tok in tokens:
        # The signature part alone is enough to be a leak.
        assert tok.rsplit(".", 1)[-1] not in text


# mTLS with BEARER_TOKEN=optional.

def test_optional_pod_bound_token_of_the_same_account(start_broker, work, kube_audit):
    broker = start_broker(aws=False, env=k8s_env(BEARER_TOKEN="optional"))
    c = work.app.client(broker)
    tok = work.token()

    mark = kube_audit.mark()
    r = c.get("/v1/secrets/db/password", headers=bearer(tok))
    assert r.status == 200, r.text
    assert r.body == work.password.encode()
    rec = broker.audit_records()[-1]
    assert rec["caller"]["service_account"] == "app"
    assert rec["caller"]["namespace"] == work.ns
    assert rec["caller"]["pod"] == "app-pod"
    assert rec["caller"]["pod_uid"] == work.pod["metadata"]["uid"]
    assert rec["caller"]["identity_source"] == "spiffe"
    assert rec["caller"]["cert_serial"]
    assert kube_audit.count(since=mark, resource="tokenreviews", verb="create",
                            audit_id=r.request_id) == 1

    # The scheme is case-insensitive; the review is cached (by hash).
    r2 = c.get("/v1/secrets/db/password", headers=bearer(tok, "bearer"))
    assert r2.status == 200
    assert broker.audit_records()[-1]["caller"]["pod"] == "app-pod"
    assert kube_audit.count(since=mark, resource="tokenreviews", verb="create") == 1

    # Optional means optional: no header, the certificate alone, no pod.
    r3 = c.secret("db", "password")
    assert r3.status == 200
    rec = broker.audit_records()[-1]
    assert rec["caller"]["service_account"] == "app" and rec["caller"]["pod"] is None
    assert_no_token_in_outputs(broker, tok)


def test_optional_token_not_bound_to_a_pod(start_broker, work):
    broker = start_broker(aws=False, env=k8s_env(BEARER_TOKEN="optional"))
    r = work.app.client(broker).get("/v1/secrets/db", headers=bearer(work.token(pod=False)))
    assert r.status == 200, r.text
    rec = broker.audit_records()[-1]
    assert rec["caller"]["pod"] is None and rec["caller"]["pod_uid"] is None


def test_optional_refusals_are_401(start_broker, work):
    broker = start_broker(aws=False, env=k8s_env(BEARER_TOKEN="optional"))
    c = work.app.client(broker)
    other_sa = work.token(sa="other")
    wrong_aud = work.token(audience="not-the-broker")
    cases = {
        "another ServiceAccount": bearer(other_sa),
        "wrong audience": bearer(wrong_aud),
        "garbage": bearer("this-is-not.a-token.at-all"),
        "garbage JWT shape": bearer("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln"),
        "over SB_MAX_BEARER_TOKEN": bearer("a" * 8193),
        "not a b64token": bearer("abc def"),
        "another scheme": bearer("dXNlcjpwYXNz", "Basic"),
        "empty": {"Authorization": "Bearer "},
    }
    before = token_rejections(broker)
    messages = set()
    for label, headers in cases.items():
        r = c.get("/v1/secrets/db", headers=headers)
        assert r.status == 401, (label, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), label
        assert work.password not in r.text
        messages.add(r.json()["error"]["message"])
        rec = broker.audit_records()[-1]
        assert rec["response"]["status_code"] == 401, label
    # One generic answer whatever was wrong.
    assert len(messages) == 1
    assert token_rejections(broker) == before + len(cases)
    assert_no_token_in_outputs(broker, other_sa, wrong_aud)

    # A refused token does not poison the certificate's own right.
    assert c.secret("db").status == 200


def test_off_ignores_the_header(start_broker, work, kube_audit):
    broker = start_broker(aws=False, env=k8s_env(BEARER_TOKEN="off"))
    mark = kube_audit.mark()
    r = work.app.client(broker).get("/v1/secrets/db", headers=bearer("garbage"))
    assert r.status == 200, r.text
    assert broker.audit_records()[-1]["caller"]["pod"] is None
    assert kube_audit.count(since=mark, resource="tokenreviews") == 0


# mTLS with BEARER_TOKEN=required.

def test_required_needs_a_token(start_broker, work):
    broker = start_broker(aws=False, env=k8s_env(BEARER_TOKEN="required"))
    c = work.app.client(broker)
    before = token_rejections(broker)

    r = c.secret("db")
    assert r.status == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert token_rejections(broker) == before + 1
    assert broker.audit_records()[-1]["response"]["status_code"] == 401

    r = c.get("/v1/secrets/db/password", headers=bearer(work.token()))
    assert r.status == 200, r.text
    assert r.body == work.password.encode()
    assert c.get("/v1/secrets/db", headers=bearer(work.token(sa="other"))).status == 401


# Reviews without an answer, and sharing one review.

@pytest.mark.parametrize("fault", [Respond(503, b"{}"), Hang(30), Reset()],
                         ids=["503", "paused", "reset"])
def test_review_without_an_answer_is_503(start_broker, work, kube_proxy, fault):
    broker = start_broker(aws=False, via_kube_proxy=True,
                          env=k8s_env(BEARER_TOKEN="optional", K8S_TIMEOUT_SECONDS=2))
    c = work.app.client(broker)
    tok = work.token()
    before = token_rejections(broker)
    rule = kube_proxy.add_rule(fault, path_re="tokenreviews")
    try:
        r = c.get("/v1/secrets/db", headers=bearer(tok))
        assert r.status == 503, r.text
        assert r.headers.get("Retry-After")
        assert work.password not in r.text
        assert broker.audit_records()[-1]["response"]["status_code"] == 503
    finally:
        kube_proxy.remove_rule(rule)
    assert token_rejections(broker) == before  # not a refusal

    # Nothing was cached from the failure: the same token works now.
    r = c.get("/v1/secrets/db/password", headers=bearer(tok))
    assert r.status == 200, r.text


def test_concurrent_requests_share_one_review(start_broker, work, kube_proxy):
    broker = start_broker(aws=False, via_kube_proxy=True,
                          env=k8s_env(BEARER_TOKEN="required"))
    tok = work.token()
    clients = [work.app.client(broker) for _ in range(6)]
    rule = kube_proxy.add_rule(Delay(1.5), path_re="tokenreviews")
    mark = kube_proxy.mark()
    statuses = []

    def one(c):
        statuses.append(c.get("/v1/secrets/db/password", headers=bearer(tok)).status)

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        kube_proxy.remove_rule(rule)
    assert statuses == [200] * len(clients)
    assert kube_proxy.count(since=mark, path_re="tokenreviews") == 1
    assert clients[0].get("/v1/secrets/db", headers=bearer(tok)).status == 200
    assert kube_proxy.count(since=mark, path_re="tokenreviews") == 1


# No mTLS (a mesh terminates it): the token is the identity.

def plain_get(broker, path, headers=None):
    s = requests.Session()
    s.trust_env = False
    try:
        return s.get(f"http://127.0.0.1:{broker.port}{path}", headers=headers, timeout=15)
    finally:
        s.close()


def raw_get(broker, path, header_lines):
    """A GET over plain HTTP with exactly these header lines (for repeated
    headers, which requests cannot send). Returns the status code."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{line}\r\n" for line in header_lines) + "\r\n"
    with socket.create_connection(("127.0.0.1", broker.port), timeout=15) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def xfcc(ns, sa):
    return (f"By=spiffe://cluster.local/ns/mesh/sa/broker;Hash={uuid.uuid4().hex};"
            f"URI=spiffe://cluster.local/ns/{ns}/sa/{sa}")


@pytest.fixture
def mesh_broker(start_broker):
    return start_broker(aws=False, env=k8s_env(MTLS_ENABLED="false", BEARER_TOKEN="required"))


def test_without_mtls_the_token_is_the_identity(mesh_broker, work):
    broker = mesh_broker
    tok = work.token()
    r = plain_get(broker, "/v1/secrets/db/password", bearer(tok))
    assert r.status_code == 200, r.text
    assert r.content == work.password.encode()
    rec = broker.audit_records()[-1]
    assert rec["caller"]["service_account"] == "app"
    assert rec["caller"]["namespace"] == work.ns
    assert rec["caller"]["identity_source"] == "token"
    assert rec["caller"]["cert_serial"] is None
    assert rec["caller"]["pod"] == "app-pod"
    assert_no_token_in_outputs(broker, tok)


def test_without_mtls_forwarded_headers_are_not_identity(mesh_broker, work):
    broker = mesh_broker
    forwarded = {"X-Forwarded-Client-Cert": xfcc(work.ns, "app"),
                 "X-Forwarded-For": "10.0.0.7", "X-Forwarded-User": "app",
                 "X-Remote-User": f"system:serviceaccount:{work.ns}:app"}

    # Forwarded headers alone: no identity.
    r = plain_get(broker, "/v1/secrets/db", forwarded)
    assert r.status_code == 401, r.text
    assert broker.audit_records()[-1]["caller"] is None or \
        broker.audit_records()[-1]["caller"]["service_account"] is None

    # With another account's token they change nothing: it is `other`,
    # which may not read db.
    r = plain_get(broker, "/v1/secrets/db", {**forwarded, **bearer(work.token(sa="other"))})
    assert r.status_code == 403, r.text
    rec = broker.audit_records()[-1]
    assert rec["caller"]["service_account"] == "other"
    assert rec["caller"]["identity_source"] == "token"


def test_without_mtls_refusals(mesh_broker, work):
    broker = mesh_broker
    tok = work.token()
    assert plain_get(broker, "/v1/secrets/db").status_code == 401
    assert plain_get(broker, "/v1/secrets/db",
                     bearer(work.token(audience="other"))).status_code == 401
    assert plain_get(broker, "/v1/secrets/db", bearer("garbage")).status_code == 401
    # Two Authorization headers are ambiguous: refused, even if one is good.
    assert raw_get(broker, "/v1/secrets/db",
                   [f"Authorization: Bearer {tok}", "Authorization: Bearer garbage"]) == 401
    assert raw_get(broker, "/v1/secrets/db", [f"authorization:   Bearer   {tok}  "]) == 200


def test_insecure_development_mode_without_a_token_has_no_identity(start_broker, work):
    broker = start_broker(aws=False, env=k8s_env(MTLS_ENABLED="false", BEARER_TOKEN="off",
                                                 INSECURE_DEVELOPMENT_MODE="true"))
    tok = work.token()
    for headers in (None, bearer(tok), {"X-Forwarded-Client-Cert": xfcc(work.ns, "app")}):
        r = plain_get(broker, "/v1/secrets/db", headers)
        assert r.status_code == 401, (headers, r.text)
