"""Malformed requests (issue 3, "Bad input"): each gets DESIGN.md's status,
and the API server sees no request for any of them."""
import pytest

from rawhttp import RawConn, request, tls_context

BAD_TARGETS = [
    ("/v1/secrets/../db", 400), ("/v1/secrets/%2e%2e/db", 400), ("/v1/secrets/a%2Fb", 400),
    ("/v1/secrets/db%2fkey", 400), ("/v1/secrets//db", 400), ("/v1/secrets/db//k", 400),
    ("/v1/secrets/db/../../x", 400), ("/v1/secrets/./db", 400), ("/v1/secrets/db/.", 400),
    ("/v1/secrets/db#frag", 400), ("/v1/secrets/DB", 400), ("/v1/secrets/db_x", 400),
    ("/v1/secrets/db/k/extra", 400), ("/v1/secrets/db?namespace=Bad_NS", 400),
    ("/v1/secrets/db?unknown=1", 400), ("/v1/secrets/db?namespace=a&namespace=b", 400),
    ("/v1/secrets/db?refresh=yes", 400), ("/v1/secrets/" + "a" * 254, 400),
    ("/v1/secrets/db/" + "k" * 254, 400), ("/v1/secrets/db\\k", 400),
    ("/v1/other", 404), ("/healthz", 404), ("/metrics", 404),
]


@pytest.fixture
def setup(start_broker, make_ns, make_caller, kube_admin, canaries, pki):
    broker = start_broker(aws=False, env={"SECRETS_BACKEND": "k8s"})
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    app = make_caller(ns)
    app.grant()
    return broker, ns, app, tls_context(pki.ca_bundle, app.cert)


def no_api_calls(kube_audit, since, ns):
    """Nothing the broker sent reached the API server for this namespace."""
    events = kube_audit.events(since=since, namespace=ns, stage=None)
    return [e for e in events if "secrets-broker" in (e.get("user") or {}).get("username", "")
            or e.get("impersonatedUser")]


@pytest.mark.parametrize("target,status", BAD_TARGETS)
def test_bad_target(setup, kube_audit, target, status):
    broker, ns, _, ctx = setup
    since = kube_audit.mark()
    got, headers, body = request(broker.port, ctx,
                                 f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert got == status, body
    assert headers.get("x-request-id")
    assert no_api_calls(kube_audit, since, ns) == []


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"])
def test_wrong_method(setup, kube_audit, method):
    broker, ns, _, ctx = setup
    since = kube_audit.mark()
    got, headers, _ = request(broker.port, ctx,
                              f"{method} /v1/secrets/db HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\n\r\n".encode())
    assert got == 405
    assert "GET" in headers.get("allow", "")
    assert no_api_calls(kube_audit, since, ns) == []


def test_absolute_form_target(setup):
    broker, _, _, ctx = setup
    got, _, _ = request(broker.port, ctx,
                        b"GET https://localhost/v1/secrets/db HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == 400


def test_oversized_uri_and_headers(setup, kube_audit):
    broker, ns, _, ctx = setup
    since = kube_audit.mark()
    got, _, _ = request(broker.port, ctx, b"GET /v1/secrets/" + b"a" * 5000
                        + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got in (414, 431)
    got, _, _ = request(broker.port, ctx, b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\n"
                        + b"X-Big: " + b"v" * 40000 + b"\r\n\r\n")
    assert got == 431
    assert no_api_calls(kube_audit, since, ns) == []


def test_content_length_with_transfer_encoding_is_400_and_close(setup, kube_audit):
    broker, ns, _, ctx = setup
    since = kube_audit.mark()
    conn = RawConn(broker.port, ctx)
    body = b'{"secrets":[{"name":"db"}]}'
    conn.send(b"POST /v1/secrets/batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
              % (len(body), len(body), body))
    status, headers, _ = conn.response()
    assert status == 400
    assert headers.get("connection", "").lower() == "close"
    assert conn.closed_by_peer()
    conn.close()
    assert no_api_calls(kube_audit, since, ns) == []


def test_body_on_get_is_refused(setup):
    broker, _, _, ctx = setup
    got, _, _ = request(broker.port, ctx,
                        b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    assert got == 400


def test_oversized_batch_body_is_413(setup, kube_audit):
    broker, ns, _, ctx = setup
    since = kube_audit.mark()
    body = b'{"secrets":[' + b",".join([b'{"name":"db"}'] * 12000) + b"]}"
    assert len(body) > 128 * 1024
    got, _, _ = request(broker.port, ctx,
                        b"POST /v1/secrets/batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                        b"Content-Type: application/json\r\n\r\n%s" % (len(body), body))
    assert got == 413
    assert no_api_calls(kube_audit, since, ns) == []


def test_batch_over_100_items_is_413(setup, kube_audit):
    broker, ns, app, _ = setup
    since = kube_audit.mark()
    r = app.client(broker).batch([{"name": "db"}] * 101)
    assert r.status == 413
    assert no_api_calls(kube_audit, since, ns) == []


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"secrets":[]}',
                                  b'{"secrets":[{"name":"DB"}]}',
                                  b'{"secrets":[{"name":"db","extra":1}]}',
                                  b'{"secrets":[{"name":"db","name":"db"}]}'])
def test_malformed_batch_is_400(setup, kube_audit, body):
    broker, ns, app, _ = setup
    since = kube_audit.mark()
    r = app.client(broker).post("/v1/secrets/batch", data=body)
    assert r.status == 400, r.text
    assert body not in r.body or body == b""  # messages never echo the body
    assert no_api_calls(kube_audit, since, ns) == []


def test_forwarding_headers_do_not_change_identity(setup, make_caller, kube_admin, canaries):
    broker, ns, app, ctx = setup
    other = make_caller(ns, "other")  # no RBAC
    got, _, _ = request(broker.port, tls_context(broker.ca_path, other.cert),
                        b"GET /v1/secrets/db HTTP/1.1\r\nHost: x\r\n"
                        b"X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/%s/sa/app\r\n"
                        b"Impersonate-User: system:serviceaccount:%s:app\r\n\r\n"
                        % (ns.encode(), ns.encode()))
    assert got == 403


def test_keepalive_survives_errors(setup):
    broker, _, _, ctx = setup
    conn = RawConn(broker.port, ctx)
    for target in (b"/v1/secrets/db/p", b"/v1/secrets/BAD", b"/v1/secrets/db/p"):
        conn.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = conn.response()
        assert headers.get("connection", "").lower() != "close"
    assert status == 200
    conn.close()
