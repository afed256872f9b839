"""The AWS Secrets Manager backend against moto with signature checking on:
Kubernetes first and AWS only for callers RBAC allows, IRSA with a web
identity token issued by the real API server, EKS Pod Identity against a
small local credentials endpoint, versions, binary secrets, credential
renewal, credential errors, retries, and batches that mix both backends
(AWS misses fetched with BatchGetSecretValue).

Every secret value is a canary. Names of AWS secrets follow the broker's
default template, {prefix}/{namespace}/{name}.
"""
import base64
import datetime
import http.server
import json
import re
import threading
import time
from pathlib import Path

import pytest

from harness.identity import NAMESPACE as BROKER_NS, NAME as BROKER_SA
from harness.proxy import Hang, Respond

STS_AUDIENCE = "sts.amazonaws.com"
JSON_11 = {"Content-Type": "application/x-amz-json-1.1"}


# Helpers.


def web_identity_token(kube_admin, path, seconds=3600):
    """A projected-style token of the broker's ServiceAccount for STS, from
    the real API server's TokenRequest, written where IRSA puts it."""
    token, _ = kube_admin.token_request(BROKER_NS, BROKER_SA, [STS_AUDIENCE], seconds)
    Path(path).write_text(token)
    return token


def irsa_env(role_arn, token_path):
    return {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
            "AWS_ROLE_ARN": role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_path),
            "AWS_ROLE_SESSION_NAME": "sb-it"}


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def sts_credentials(aws, role_arn):
    """Temporary credentials moto knows (it keeps them for an hour): the XML
    answer and its fields."""
    r = aws.assume_role_with_web_identity(role_arn, "not-checked-by-moto")
    assert r.status_code == 200, r.text
    fields = {k: re.search(f"<{k}>([^<]+)</{k}>", r.text).group(1)
              for k in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")}
    return r.text, fields


def with_expiration(xml, ts):
    return re.sub(r"<Expiration>[^<]+</Expiration>", f"<Expiration>{iso(ts)}</Expiration>", xml)


def signing_key(record):
    """The access key id a request was signed with."""
    return re.search(r"Credential=([A-Za-z0-9]+)/", record.header("authorization")).group(1)


def sm_calls(aws, since, action=None):
    recs = aws.proxy.requests(since=since)
    return [r for r in recs if r.action in ((action,) if action else
                                            ("GetSecretValue", "BatchGetSecretValue"))]


class CredentialsEndpoint:
    """A stand-in for the EKS Pod Identity Agent on loopback: answers GET
    /v1/credentials with the next of `answers` (the last one repeats) and
    records each request's Authorization header."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                endpoint.seen.append((self.path, self.headers.get("Authorization")))
                answer = endpoint.answers.pop(0) if len(endpoint.answers) > 1 else \
                    endpoint.answers[0]
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/credentials"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def pod_identity_answer(fields, expires):
    return {"AccessKeyId": fields["AccessKeyId"], "SecretAccessKey": fields["SecretAccessKey"],
            "Token": fields["SessionToken"], "AccountId": "123456789012",
            "Expiration": iso(expires)}


# Kubernetes first; AWS only for callers RBAC allows.

@pytest.mark.asan
def test_irsa_reads_aws_secret_with_a_token_from_the_api_server(
        start_broker, aws, broker_aws_keys, broker_identity, kube_admin, ns, make_caller, canaries,
        tmp_path):
    app = make_caller(ns)
    value = canaries.make("api-key")
    created = aws.create_secret(aws.secret_id(ns, "api-key"), {"token": value, "port": 8443})
    role = aws.create_role()
    token = web_identity_token(kube_admin, tmp_path / "token")
    app.grant("api-key")
    kube_admin.wait_granted(ns, "app", "api-key")

    mark = aws.proxy.mark()
    aws.allow_unsigned(1)  # the broker's first moto call is its STS call
    broker = start_broker(env=irsa_env(role, tmp_path / "token"))
    r = app.client(broker).secret("api-key")

    assert r.status == 200, r
    body = r.json()
    assert body["backend"] == "aws-secrets-manager"
    assert body["data"] == {"token": value, "port": "8443"}
    assert body["version"] == created["VersionId"]

    sts = aws.proxy.requests(since=mark, action="AssumeRoleWithWebIdentity")
    assert len(sts) == 1 and sts[0].path == "/" and sts[0].method == "POST"
    assert "authorization" not in sts[0].headers
    form = dict(x.split("=", 1) for x in sts[0].body.decode().split("&"))
    assert form["RoleSessionName"] == "sb-it"
    assert form["WebIdentityToken"] == token  # base64url: nothing to decode
    review = kube_admin.token_review(form["WebIdentityToken"], [STS_AUDIENCE])
    assert review["authenticated"]
    assert review["user"]["username"] == f"system:serviceaccount:{BROKER_NS}:{BROKER_SA}"

    gets = sm_calls(aws, mark)
    assert len(gets) == 1 and gets[0].status == 200
    assert signing_key(gets[0]).startswith("ASIA")  # STS credentials, not a user's
    assert gets[0].header("x-amz-security-token")
    # Logs name the source, never a key.
    assert any("source web-identity" in rec.get("msg", "") for rec in broker.log_records())
    stderr = broker.stderr()
    assert signing_key(gets[0]) not in stderr and token not in stderr


def test_caller_without_rbac_gets_403_and_aws_is_never_asked(
        broker, aws, ns, make_caller, canaries):
    app = make_caller(ns)
    aws.create_secret(aws.secret_id(ns, "api-key"), canaries.make("api-key"))
    mark = aws.proxy.mark()

    for path in ("api-key", "api-key/value"):
        name, _, key = path.partition("/")
        r = app.client(broker).secret(name, key or None)
        assert r.status == 403, r
        assert r.json()["error"]["code"] == "forbidden"
    r = app.client(broker).batch([{"name": "api-key"}])
    assert r.json()["results"][0]["status"] == 403
    assert sm_calls(aws, mark) == []


def test_aws_alone_is_authorized_by_a_subject_access_review_first(
        start_broker, aws, broker_identity, kube_admin, kube_audit, ns, make_caller, canaries):
    """With AWS the only backend no read is made as the caller: a
    SubjectAccessReview for the caller on secrets/<name> comes before any
    AWS call, and a denial means no AWS call at all."""
    reader, other = make_caller(ns, "reader"), make_caller(ns, "other")
    value = canaries.make("only-in-aws")
    aws.create_secret(aws.secret_id(ns, "api-key"), {"v": value})
    reader.grant("api-key")
    kube_admin.wait_granted(ns, "reader", "api-key")
    broker = start_broker(env={"SECRETS_BACKEND": "aws-secrets-manager"})
    audit_mark, mark = kube_audit.mark(), aws.proxy.mark()

    denied = other.client(broker).secret("api-key")
    assert denied.status == 403, denied
    assert sm_calls(aws, mark) == []
    allowed = reader.client(broker).secret("api-key")
    assert allowed.status == 200 and allowed.json()["data"] == {"v": value}, allowed
    assert len(sm_calls(aws, mark)) == 1

    reviews = kube_audit.events(since=audit_mark, verb="create",
                                resource="subjectaccessreviews", user=broker_identity.username)
    assert {e["auditID"] for e in reviews} == {denied.request_id, allowed.request_id}
    assert kube_audit.count(since=audit_mark, resource="secrets") == 0


def test_kubernetes_secret_shadows_the_aws_one(
        broker, aws, kube_admin, ns, make_caller, canaries):
    app = make_caller(ns)
    in_k8s, in_aws = canaries.make("k8s-db"), canaries.make("aws-db")
    kube_admin.create_secret(ns, "db", string_data={"password": in_k8s})
    aws.create_secret(aws.secret_id(ns, "db"), {"password": in_aws})
    app.grant("db")
    kube_admin.wait_granted(ns, "app", "db")
    mark = aws.proxy.mark()

    r = app.client(broker).secret("db", refresh="true")
    assert r.status == 200, r
    assert r.json()["backend"] == "kubernetes"
    assert r.json()["data"] == {"password": in_k8s}
    assert sm_calls(aws, mark) == []


def test_secret_absent_everywhere_is_404_after_asking_aws(
        broker, aws, kube_admin, ns, make_caller):
    app = make_caller(ns)
    app.grant("ghost")
    kube_admin.wait_granted(ns, "app", "ghost")
    mark = aws.proxy.mark()

    r = app.client(broker).secret("ghost")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found", r
    gets = sm_calls(aws, mark, "GetSecretValue")
    assert len(gets) == 1
    assert json.loads(gets[0].body) == {"SecretId": aws.secret_id(ns, "ghost")}


# Versions and shapes.

def test_version_stage_and_version_id(broker, aws, kube_admin, ns, make_caller, canaries):
    app = make_caller(ns)
    sid = aws.secret_id(ns, "rotating")
    old, new = canaries.make("old"), canaries.make("new")
    v1 = aws.create_secret(sid, {"password": old})["VersionId"]
    v2 = aws.put_secret_value(sid, {"password": new})
    app.grant("rotating")
    kube_admin.wait_granted(ns, "app", "rotating")
    client = app.client(broker)
    mark = aws.proxy.mark()

    current = client.secret("rotating")
    previous = client.secret("rotating", version_stage="AWSPREVIOUS")
    by_id = client.secret("rotating", version_id=v1)
    key = client.secret("rotating", "password", version_stage="AWSPREVIOUS")

    assert current.json()["data"]["password"] == new and current.json()["version"] == v2
    assert previous.json()["data"]["password"] == old and previous.json()["version"] == v1
    assert by_id.json()["data"]["password"] == old and by_id.json()["version"] == v1
    assert key.status == 200 and key.body == old.encode()
    bodies = [json.loads(r.body) for r in sm_calls(aws, mark, "GetSecretValue")]
    assert {"SecretId": sid, "VersionStage": "AWSPREVIOUS"} in bodies
    assert {"SecretId": sid, "VersionId": v1} in bodies


@pytest.mark.asan
def test_binary_and_plain_string_secrets(broker, aws, kube_admin, ns, make_caller, canaries):
    app = make_caller(ns)
    raw = canaries.make_bytes("cert")
    text = canaries.make("token")
    aws.create_secret(aws.secret_id(ns, "cert"), binary=raw)
    aws.create_secret(aws.secret_id(ns, "token"), string=text)
    aws.create_secret(aws.secret_id(ns, "nested"), {"a": {"b": text}})
    app.grant("cert", "token", "nested")
    kube_admin.wait_granted(ns, "app", "cert", "token", "nested")
    client = app.client(broker)

    whole = client.secret("cert")
    assert whole.status == 200, whole
    assert whole.json()["binary_data"] == {"value": base64.b64encode(raw).decode()}
    assert not whole.json().get("data")
    one = client.secret("cert", "value")
    assert one.body == raw and one.headers["Content-Type"] == "application/octet-stream"

    assert client.secret("token").json()["data"] == {"value": text}
    one = client.secret("token", "value")
    assert one.body == text.encode() and one.headers["Content-Type"].startswith("text/plain")
    # Not flat: the whole JSON text is the value.
    assert json.loads(client.secret("nested").json()["data"]["value"]) == {"a": {"b": text}}


# Credentials.

@pytest.mark.slow
def test_short_lived_credentials_are_renewed_without_a_failed_request(
        start_broker, aws, broker_aws_keys, broker_identity, kube_admin, ns, make_caller, canaries,
        tmp_path):
    """STS answers go through the proxy: the first with real moto
    credentials made to look as if they expire in five minutes and four
    seconds, so renewal (five minutes ahead) starts four seconds in."""
    app = make_caller(ns)
    value = canaries.make("renewed")
    aws.create_secret(aws.secret_id(ns, "renewed"), {"v": value})
    role = aws.create_role()
    web_identity_token(kube_admin, tmp_path / "token")
    xml_a, first = sts_credentials(aws, role)
    xml_b, second = sts_credentials(aws, role)
    app.grant("renewed")
    kube_admin.wait_granted(ns, "app", "renewed")

    short = with_expiration(xml_a, time.time() + 5 * 60 + 4)
    xml_ct = {"Content-Type": "text/xml"}
    aws.proxy.add_rule(Respond(200, short.encode(), xml_ct), times=1,
                       action="AssumeRoleWithWebIdentity")
    aws.proxy.add_rule(Respond(200, xml_b.encode(), xml_ct), times=1,
                       action="AssumeRoleWithWebIdentity")
    mark = aws.proxy.mark()
    # No value cache: every request reaches AWS with whatever key is current.
    broker = start_broker(env={**irsa_env(role, tmp_path / "token"), "CACHE_ENABLED": "false"})
    client = app.client(broker)

    statuses = []
    until = time.monotonic() + 8
    while time.monotonic() < until:
        r = client.secret("renewed")
        statuses.append(r.status)
        assert r.status == 200 and r.json()["data"]["v"] == value, r
        time.sleep(0.1)

    assert aws.proxy.count(since=mark, action="AssumeRoleWithWebIdentity") == 2
    keys = [signing_key(rec) for rec in sm_calls(aws, mark)]
    assert keys[0] == first["AccessKeyId"] and keys[-1] == second["AccessKeyId"]
    switch = keys.index(second["AccessKeyId"])
    assert set(keys[:switch]) == {first["AccessKeyId"]}
    assert set(keys[switch:]) == {second["AccessKeyId"]}
    assert all(rec.status == 200 for rec in sm_calls(aws, mark))
    assert len(statuses) > 20


@pytest.mark.asan
def test_wrong_secret_key_is_a_clear_503_and_one_line_naming_the_source(
        start_broker, aws, broker_aws_keys, kube_admin, ns, make_caller, canaries):
    app = make_caller(ns)
    aws.create_secret(aws.secret_id(ns, "api-key"), canaries.make("api-key"))
    app.grant("api-key")
    kube_admin.wait_granted(ns, "app", "api-key")
    wrong = "wrongSecret" + broker_aws_keys[1][11:]
    broker = start_broker(env={"AWS_SECRET_ACCESS_KEY": wrong})
    mark = aws.proxy.mark()

    r = app.client(broker).secret("api-key")

    assert r.status in (502, 503), r
    err = r.json()["error"]
    assert err["code"] == "backend_credentials"
    assert "credentials" in err["message"]
    gets = sm_calls(aws, mark)
    assert len(gets) == 1 and gets[0].status == 403  # not retried: it cannot help
    lines = [rec for rec in broker.log_records()
             if "refused the broker's credentials" in rec.get("msg", "")]
    assert len(lines) == 1, lines
    assert "source environment" in lines[0]["msg"]
    assert "SignatureDoesNotMatch" in lines[0]["msg"]
    assert lines[0].get("request_id") == r.request_id
    stderr = broker.stderr()
    assert wrong not in stderr and broker_aws_keys[0] not in stderr


@pytest.mark.asan
def test_pod_identity_credentials_from_a_local_endpoint(
        start_broker, aws, broker_aws_keys, kube_admin, ns, make_caller, canaries, tmp_path):
    """The token file is re-read at every fetch: the second fetch (renewal,
    four seconds in) carries the rotated token."""
    app = make_caller(ns)
    value = canaries.make("pod-identity")
    aws.create_secret(aws.secret_id(ns, "api-key"), {"v": value})
    role = aws.create_role()
    _, first = sts_credentials(aws, role)
    _, second = sts_credentials(aws, role)
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("pod-identity-token-1\n")
    app.grant("api-key")
    kube_admin.wait_granted(ns, "app", "api-key")

    answers = [pod_identity_answer(first, time.time() + 5 * 60 + 4),
               pod_identity_answer(second, time.time() + 3600)]
    with CredentialsEndpoint(answers) as agent:
        env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": agent.url,
               "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
               "CACHE_ENABLED": "false"}
        mark = aws.proxy.mark()
        broker = start_broker(env=env)
        client = app.client(broker)
        r = client.secret("api-key")
        assert r.status == 200 and r.json()["data"] == {"v": value}, r

        token_file.write_text("pod-identity-token-2")
        until = time.monotonic() + 10
        while len(agent.seen) < 2 and time.monotonic() < until:
            assert client.secret("api-key").status == 200
            time.sleep(0.2)
        time.sleep(0.5)  # the agent has answered; let the broker take the new key
        r = client.secret("api-key")
        assert r.status == 200

    assert agent.seen[:2] == [("/v1/credentials", "pod-identity-token-1"),
                              ("/v1/credentials", "pod-identity-token-2")]
    keys = [signing_key(rec) for rec in sm_calls(aws, mark)]
    assert keys[0] == first["AccessKeyId"] and keys[-1] == second["AccessKeyId"]
    assert any("source container" in rec.get("msg", "") for rec in broker.log_records())


def test_refused_settings_stop_the_broker_with_one_line(start_broker, tmp_path):
    cases = [
        ({"AWS_REGION": None}, "AWS_REGION"),
        ({"AWS_SECRET_ACCESS_KEY": None}, "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
          "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://192.0.2.1/creds"},
         "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
          "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/x"}, "AWS_WEB_IDENTITY_TOKEN_FILE"),
        ({"AWS_SECRET_ID_TEMPLATE": "{prefix}/{ns}/{name}"}, "AWS_SECRET_ID_TEMPLATE"),
        ({"AWS_CA_BUNDLE": str(tmp_path / "missing.pem")}, "AWS_CA_BUNDLE"),
        ({"AWS_ENDPOINT_URL_SECRETS_MANAGER": "moto:5000"}, "AWS_ENDPOINT_URL_SECRETS_MANAGER"),
    ]
    for env, name in cases:
        broker = start_broker(env=env, wait=False, check_exit=False)
        assert broker.wait_exit(15) not in (0, None), name
        errors = [rec for rec in broker.log_records() if rec.get("level") == "error"]
        assert len(errors) == 1 and name in errors[0]["msg"], (name, errors)


# Retries.

def test_throttling_is_retried_within_three_attempts(
        broker, aws, kube_admin, ns, make_caller, canaries):
    app = make_caller(ns)
    value = canaries.make("throttled")
    aws.create_secret(aws.secret_id(ns, "busy"), {"v": value})
    aws.create_secret(aws.secret_id(ns, "down"), {"v": canaries.make("down")})
    app.grant("busy", "down")
    kube_admin.wait_granted(ns, "app", "busy", "down")
    throttled = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
    aws.proxy.add_rule(Respond(400, throttled, JSON_11), times=2, action="GetSecretValue",
                       predicate=lambda rec: b"/busy" in rec.body)
    down = aws.proxy.add_rule(Respond(503, b'{"__type":"InternalServiceError"}', JSON_11),
                              action="GetSecretValue", predicate=lambda rec: b"/down" in rec.body)
    mark = aws.proxy.mark()
    client = app.client(broker)

    r = client.secret("busy")
    assert r.status == 200 and r.json()["data"]["v"] == value, r
    assert [rec.status for rec in sm_calls(aws, mark)] == [400, 400, 200]

    mark = aws.proxy.mark()
    r = client.secret("down")
    aws.proxy.remove_rule(down)
    assert r.status == 503 and r.json()["error"]["code"] == "backend_unavailable", r
    assert [rec.status for rec in sm_calls(aws, mark)] == [503, 503, 503]


# Batches.

@pytest.mark.asan
def test_batch_mixes_kubernetes_and_aws_with_batch_get_for_aws_misses(
        start_broker, aws, kube_admin, ns, make_caller, canaries):
    app = make_caller(ns)
    values = {name: canaries.make(name) for name in ("db", "api-key", "cfg", "blob", "hidden")}
    kube_admin.create_secret(ns, "db", string_data={"password": values["db"]})
    for name in ("api-key", "cfg", "blob", "hidden"):
        aws.create_secret(aws.secret_id(ns, name), {"user": values[name]})
    app.grant("db", "api-key", "cfg", "blob", "ghost")
    kube_admin.wait_granted(ns, "app", "db", "api-key", "cfg", "blob", "ghost")
    # A window wide enough that the items' Kubernetes 404s meet in one
    # BatchGetSecretValue even on a loaded test machine, where they can end
    # tens of milliseconds apart (the default, 2 ms after the latest, suits
    # a real API server).
    broker = start_broker(env={"AWS_BATCH_WINDOW_MS": "40"})
    mark = aws.proxy.mark()

    r = app.client(broker).batch([
        {"name": "db", "key": "password"}, {"name": "api-key"}, {"name": "cfg", "key": "user"},
        {"name": "blob"}, {"name": "ghost"}, {"name": "hidden"}])

    assert r.status == 200, r
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 200, 200, 404, 403]
    assert results[0]["value"] == values["db"]
    assert results[1]["secret"]["backend"] == "aws-secrets-manager"
    assert results[1]["secret"]["data"] == {"user": values["api-key"]}
    assert results[2]["value"] == values["cfg"]
    assert results[3]["secret"]["data"] == {"user": values["blob"]}
    assert results[4]["error"]["code"] == "not_found"

    calls = sm_calls(aws, mark)
    assert {c.action for c in calls} == {"BatchGetSecretValue"}, [c.action for c in calls]
    asked = [i for c in calls for i in json.loads(c.body)["SecretIdList"]]
    assert sorted(asked) == sorted(aws.secret_id(ns, n)
                                   for n in ("api-key", "cfg", "blob", "ghost"))
    assert all(len(json.loads(c.body)["SecretIdList"]) <= 20 for c in calls)


def test_batch_get_answers_settle_each_id(start_broker, aws, kube_admin, ns, make_caller,
                                          canaries):
    """A BatchGetSecretValue that fails as a whole (here: the role may not
    make it) falls back to one GetSecretValue per id."""
    app = make_caller(ns)
    names = [f"s{i}" for i in range(5)]
    values = {n: canaries.make(n) for n in names}
    for n in names:
        aws.create_secret(aws.secret_id(ns, n), values[n])
    app.grant(*names)
    kube_admin.wait_granted(ns, "app", *names)
    denied = (b'{"__type":"AccessDeniedException","message":"not authorized to perform '
              b'secretsmanager:BatchGetSecretValue"}')
    aws.proxy.add_rule(Respond(400, denied, JSON_11), times=1, action="BatchGetSecretValue")
    broker = start_broker(env={"AWS_BATCH_WINDOW_MS": "40"})
    mark = aws.proxy.mark()

    r = app.client(broker).batch([{"name": n} for n in names])

    results = r.json()["results"]
    assert [x["status"] for x in results] == [200] * 5, results
    assert [x["secret"]["data"]["value"] for x in results] == [values[n] for n in names]
    actions = [c.action for c in sm_calls(aws, mark)]
    assert actions.count("BatchGetSecretValue") == 1
    assert actions.count("GetSecretValue") == 5


# Deadlines and shutdown.

@pytest.mark.asan
def test_deadline_bounds_aws_waits_and_sigterm_drains_them(
        start_broker, aws, kube_admin, ns, make_caller, canaries):
    """One request is told to come back in 5 s (past its deadline: no
    retry, and the delay is passed on), another meets an AWS that never
    answers (two attempts, then 504). SIGTERM in the middle: both get their
    answers within the grace period and the broker exits 0."""
    app = make_caller(ns)
    for name in ("slow", "hung"):
        aws.create_secret(aws.secret_id(ns, name), canaries.make(name))
    app.grant("slow", "hung")
    kube_admin.wait_granted(ns, "app", "slow", "hung")
    throttled = Respond(400, b'{"__type":"ThrottlingException"}', {**JSON_11, "Retry-After": "5"})
    aws.proxy.add_rule(throttled, action="GetSecretValue", predicate=lambda r: b"/slow" in r.body)
    aws.proxy.add_rule(Hang(60), action="GetSecretValue", predicate=lambda r: b"/hung" in r.body)
    broker = start_broker(env={"REQUEST_TIMEOUT_SECONDS": "4", "AWS_TIMEOUT_SECONDS": "2",
                               "SHUTDOWN_GRACE_SECONDS": "10", "AWS_BATCH_WINDOW_MS": "0"})
    mark = aws.proxy.mark()

    client = app.client(broker, timeout=30)
    replies = {}
    threads = [threading.Thread(target=lambda n=n: replies.update({n: client.secret(n)}))
               for n in ("slow", "hung")]
    for t in threads:
        t.start()
    until = time.monotonic() + 10
    while aws.proxy.count(since=mark, action="GetSecretValue") < 2:
        assert time.monotonic() < until, "the broker never called AWS"
        time.sleep(0.05)
    t0 = time.monotonic()
    assert broker.stop() == 0
    for t in threads:
        t.join(10)
    aws.proxy.clear_rules()

    assert time.monotonic() - t0 < 8
    assert replies["slow"].status == 503, replies["slow"]
    assert replies["slow"].json()["error"]["code"] == "backend_throttled"
    assert replies["slow"].headers.get("Retry-After") == "5"
    assert replies["hung"].status == 504, replies["hung"]
    hung = [r for r in sm_calls(aws, mark, "GetSecretValue") if b"/hung" in r.body]
    slow = [r for r in sm_calls(aws, mark, "GetSecretValue") if b"/slow" in r.body]
    assert len(hung) == 2 and len(slow) == 1
