"""The core API against the real API server (issue 3): a caller reads what
its RBAC allows, whole, by key and in batches, and nothing else; the same
in both authorization modes; revocation; the broker's own rights."""
import pytest

MODES = ["impersonate", "tokenrequest"]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def k8s_broker(start_broker, mode):
    """A Kubernetes-only broker in the given AUTH_MODE."""
    return start_broker(aws=False, env={"SECRETS_BACKEND": "k8s", "AUTH_MODE": mode})


def test_allowed_caller_reads_whole_key_and_batch(k8s_broker, make_ns, make_caller,
                                                  kube_admin, canaries):
    ns = make_ns()
    password, user = canaries.make("password"), canaries.make("user")
    kube_admin.create_secret(ns, "db", string_data={"user": user, "password": password})
    app = make_caller(ns, "app")
    app.grant("db")
    c = app.client(k8s_broker)

    r = c.secret("db")
    assert r.status == 200, r.text
    body = r.json()
    assert body["name"] == "db" and body["namespace"] == ns
    assert body["backend"] == "kubernetes"
    assert body["data"] == {"user": user, "password": password}
    assert body["binary_data"] == {}
    assert body["version"]
    assert r.headers["X-Request-Id"]

    r = c.secret("db", "password")
    assert r.status == 200
    assert r.body == password.encode()
    assert r.headers["Content-Type"].startswith("text/plain")

    r = c.batch([{"name": "db", "key": "user"}, {"name": "db"}])
    assert r.status == 200
    first, second = r.json()["results"]
    assert first == {"name": "db", "namespace": ns, "key": "user", "status": 200, "value": user}
    assert second["status"] == 200 and second["secret"]["data"]["password"] == password


def test_caller_without_rbac_gets_403(k8s_broker, make_ns, make_caller, kube_admin, canaries):
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"password": canaries.make()})
    reader = make_caller(ns, "reader")
    reader.grant("db")
    other = make_caller(ns, "other")

    r = other.client(k8s_broker).secret("db")
    assert r.status == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    # The name is no oracle: a missing secret is a 403 too for this caller.
    assert other.client(k8s_broker).secret("does-not-exist").status == 403
    # A grant for another name does not extend to db.
    narrow = make_caller(ns, "narrow")
    narrow.grant("api")
    assert narrow.client(k8s_broker).secret("db").status == 403


def test_other_namespace_by_query(k8s_broker, make_ns, make_caller, kube_admin, canaries):
    home, shared = make_ns("home"), make_ns("shared")
    value = canaries.make()
    kube_admin.create_secret(shared, "token", string_data={"token": value})
    app = make_caller(home, "app")
    stranger = make_caller(home, "stranger")
    app.grant("token", ns=shared)

    r = app.client(k8s_broker).secret("token", "token", namespace=shared)
    assert r.status == 200 and r.body == value.encode()
    assert stranger.client(k8s_broker).secret("token", namespace=shared).status == 403
    # Without ?namespace= the caller's own namespace is read: nothing there.
    assert app.client(k8s_broker).secret("token").status == 403


def test_missing_secret_and_key_give_404(k8s_broker, make_ns, make_caller, kube_admin, canaries):
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"user": canaries.make()})
    app = make_caller(ns)
    app.grant()  # every secret in ns
    c = app.client(k8s_broker)

    assert c.secret("nope").status == 404
    assert c.secret("nope").json()["error"]["code"] == "not_found"
    assert c.secret("db", "no-such-key").status == 404


def test_batch_mixes_statuses(k8s_broker, make_ns, make_caller, kube_admin, canaries):
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"user": canaries.make()})
    kube_admin.create_secret(ns, "private", string_data={"k": canaries.make()})
    app = make_caller(ns)
    app.grant("db", "missing")

    r = app.client(k8s_broker).batch([{"name": "db", "key": "user"}, {"name": "private"},
                                      {"name": "missing"}])
    assert r.status == 200
    assert [item["status"] for item in r.json()["results"]] == [200, 403, 404]
    assert "secret" not in r.json()["results"][1] and "value" not in r.json()["results"][1]


def test_binary_values_go_to_binary_data(k8s_broker, make_ns, make_caller, kube_admin, canaries):
    ns = make_ns()
    blob = canaries.make_bytes() + b"\xff\xfe\x00"
    kube_admin.create_secret(ns, "certs", data={"cert.der": blob})
    app = make_caller(ns)
    app.grant("certs")
    c = app.client(k8s_broker)

    r = c.secret("certs")
    import base64
    assert base64.b64decode(r.json()["binary_data"]["cert.der"]) == blob
    raw = c.secret("certs", "cert.der")
    assert raw.body == blob and raw.headers["Content-Type"] == "application/octet-stream"


def test_deleting_the_rolebinding_fails_the_next_read(start_broker, mode, make_ns, make_caller,
                                                     kube_admin, canaries):
    broker = start_broker(aws=False, env={"SECRETS_BACKEND": "k8s", "AUTH_MODE": mode,
                                          "AUTHZ_ALLOW_TTL_SECONDS": "0"})
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    app = make_caller(ns)
    binding = app.grant("db")
    c = app.client(broker)
    assert c.secret("db").status == 200
    assert c.secret("db").status == 200  # now served from the value cache

    kube_admin.delete_role_binding(ns, binding)
    r = c.secret("db")
    assert r.status == 403, r.text


def test_reads_are_made_as_the_caller(k8s_broker, mode, make_ns, make_caller, kube_admin,
                                      kube_audit, canaries):
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    app = make_caller(ns)
    app.grant("db")
    since = kube_audit.mark()
    r = app.client(k8s_broker).secret("db")
    assert r.status == 200

    reads = kube_audit.secret_reads(ns, "db", since=since)
    assert len(reads) == 1
    ev = reads[0]
    # Both audit logs join on the request id.
    assert ev["auditID"] == r.request_id
    if mode == "impersonate":
        assert ev["user"]["username"] == "system:serviceaccount:secrets-broker-system:secrets-broker"
        assert ev["impersonatedUser"]["username"] == app.username
        assert "groups" not in ev["impersonatedUser"] or set(
            ev["impersonatedUser"]["groups"]) <= {"system:serviceaccounts",
                                                  f"system:serviceaccounts:{ns}",
                                                  "system:authenticated"}
    else:
        assert ev["user"]["username"] == app.username
        assert "impersonatedUser" not in ev


def test_broker_identity_cannot_read_secrets_itself(broker_identity, kube_admin):
    review = kube_admin.subject_access_review("secrets-broker-system", "secrets-broker", "get",
                                              "secrets", name="db", namespace="default")
    assert review.get("allowed") is not True
    review = kube_admin.subject_access_review("secrets-broker-system", "secrets-broker", "list",
                                              "secrets", namespace="default")
    assert review.get("allowed") is not True


def test_in_cluster_configuration(start_broker, make_ns, make_caller, kube_admin, canaries):
    broker = start_broker(kube="incluster", aws=False, env={"SECRETS_BACKEND": "k8s"})
    ns = make_ns()
    value = canaries.make()
    kube_admin.create_secret(ns, "db", string_data={"p": value})
    app = make_caller(ns)
    app.grant("db")
    r = app.client(broker).secret("db", "p")
    assert r.status == 200 and r.body == value.encode()


def test_every_answer_is_audited_with_its_request_id(k8s_broker, make_ns, make_caller,
                                                    kube_admin, canaries):
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    app = make_caller(ns)
    app.grant("db")
    c = app.client(k8s_broker)
    ids = [c.secret("db").request_id, c.secret("nope").request_id, c.secret("BAD").request_id]
    records = {rec["request_id"]: rec for rec in k8s_broker.audit_records()}
    assert [records[i]["response"]["status_code"] for i in ids] == [200, 403, 400]
    assert records[ids[0]]["caller"]["service_account"] == "app"
    assert records[ids[0]]["decision"] == "allow"
