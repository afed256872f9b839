"""Client certificates (issue 3): each bad kind is refused, in the TLS
handshake where the certificate itself is bad and with 401 where only its
identity is; nothing reaches the API server for them; good callers are
served throughout."""
import ssl

import pytest
import requests

from harness.pki import BAD_KINDS
from rawhttp import RawConn, tls_context

# Refused during the handshake (with a TLS alert) ...
HANDSHAKE = {"expired", "not_yet_valid", "unknown_ca", "no_client_auth", "ca_as_leaf"}
# ... or, once the chain is fine, for the identity it carries.
IDENTITY = {"two_uri_sans", "wrong_trust_domain"}


@pytest.fixture
def served(start_broker, make_ns, make_caller, kube_admin, canaries):
    broker = start_broker(aws=False, env={"SECRETS_BACKEND": "k8s"})
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    good = make_caller(ns, "good")
    good.grant()
    return broker, ns, good


def test_kinds_cover_the_issue():
    assert HANDSHAKE | IDENTITY == set(BAD_KINDS)


@pytest.mark.parametrize("kind", sorted(HANDSHAKE | IDENTITY))
def test_bad_certificate_is_refused(served, pki, kind, kube_audit, make_caller):
    broker, ns, good = served
    make_caller(ns, "bad")
    kube_admin_grant = good.kube.grant_secret_read(ns, "bad")  # RBAC would allow it
    assert kube_admin_grant
    cert = pki.bad(kind, ns=ns, sa="bad")
    since = kube_audit.mark()

    if kind in HANDSHAKE:
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            broker.client(cert).secret("db")
    else:
        r = broker.client(cert).secret("db")
        assert r.status == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"

    assert kube_audit.secret_reads(ns, "db", since=since) == []
    assert good.client(broker).secret("db").status == 200


def test_no_certificate_gets_certificate_required(served, pki):
    broker, _, good = served
    conn = None
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)) as info:
        conn = RawConn(broker.port, tls_context(pki.ca_bundle))
        conn.send(b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.response()
    if conn:
        conn.close()
    assert "CERTIFICATE_REQUIRED" in str(info.value).upper() or isinstance(
        info.value, (ConnectionError, EOFError))
    assert good.client(broker).secret("db").status == 200


def test_unknown_ca_gets_an_alert(served, pki):
    broker, ns, _ = served
    ctx = tls_context(pki.ca_bundle, pki.bad("unknown_ca", ns=ns, sa="x"))
    with pytest.raises(ssl.SSLError) as info:
        conn = RawConn(broker.port, ctx)
        conn.send(b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.response()
    assert "UNKNOWN_CA" in str(info.value).upper()


def test_handshake_failures_are_counted_by_reason(served, pki):
    broker, ns, _ = served
    for kind in ("expired", "unknown_ca", "ca_as_leaf"):
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            broker.client(pki.bad(kind, ns=ns, sa="x")).secret("db")
    m = broker.metrics()
    reasons = {dict(labels)["reason"]: v for (name, labels), v in m.items()
               if name == "secrets_broker_tls_handshake_failures_total"}
    assert reasons["expired"] >= 1
    assert reasons["untrusted"] >= 1
    assert reasons["ca_as_leaf"] >= 1


def test_tls12_is_refused_by_default(served, pki):
    broker, ns, good = served
    ctx = tls_context(pki.ca_bundle, good.cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawConn(broker.port, ctx).send(b"GET / HTTP/1.1\r\n\r\n")


def test_tls12_when_configured(start_broker, make_ns, make_caller, kube_admin, canaries, pki):
    broker = start_broker(aws=False, env={"SECRETS_BACKEND": "k8s", "TLS_MIN_VERSION": "1.2"})
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    app = make_caller(ns)
    app.grant()
    ctx = tls_context(pki.ca_bundle, app.cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = RawConn(broker.port, ctx)
    conn.send(b"GET /v1/secrets/db/p HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = conn.response()
    conn.close()
    assert status == 200


def test_cn_fallback_is_off_by_default_and_works_when_on(start_broker, make_ns, make_caller,
                                                        kube_admin, canaries, pki):
    ns = make_ns("cn")  # short: a CN holds at most 64 characters
    value = canaries.make()
    kube_admin.create_secret(ns, "db", string_data={"p": value})
    app = make_caller(ns)
    app.grant()
    cert = pki.mint("cn-only", cn=f"system:serviceaccount:{ns}:app")

    off = start_broker(aws=False, env={"SECRETS_BACKEND": "k8s"})
    assert off.client(cert).secret("db", "p").status == 401
    on = start_broker(aws=False, env={"SECRETS_BACKEND": "k8s", "IDENTITY_CN_FALLBACK": "true"})
    r = on.client(cert).secret("db", "p")
    assert r.status == 200 and r.body == value.encode()
