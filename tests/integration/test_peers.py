"""The peers are real and strict: RBAC is enforced on impersonated reads,
ServiceAccount tokens round-trip through TokenReview, moto checks SigV4
signatures and issues web-identity credentials, and the broker's own
ServiceAccount cannot read secrets. If one of these fails, broker tests
built on the peers would prove nothing."""
import uuid
import xml.etree.ElementTree as ET

import botocore.exceptions
import pytest
import requests

from harness.aws import error_code
from harness.kube import sa_username
from harness.proxy import Respond
from harness.wait import eventually

STS_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}



def test_impersonated_read_needs_a_rolebinding(kube, kube_admin, broker_identity, ns,
                                              make_caller, canaries):
    app = make_caller(ns, "app")
    value = canaries.make("peer-db")
    kube_admin.create_secret(ns, "db", string_data={"password": value})
    as_broker = broker_identity.client
    mark = kube.audit.mark()

    denied_id = f"sb-it-{uuid.uuid4()}"
    r = as_broker.request("GET", f"/api/v1/namespaces/{ns}/secrets/db",
                          impersonate=(ns, "app"), audit_id=denied_id)
    assert r.status_code == 403, r.text

    app.grant("db")
    allowed_id = f"sb-it-{uuid.uuid4()}"

    def read():
        return as_broker.request("GET", f"/api/v1/namespaces/{ns}/secrets/db",
                                 impersonate=(ns, "app"), audit_id=allowed_id)
    r = eventually(lambda: (lambda r: r if r.status_code == 200 else None)(read()))
    assert r is not None and r.status_code == 200
    assert r.json()["data"]["password"]  # base64 of the canary
    assert r.headers.get("Audit-Id") == allowed_id

    reads = kube.audit.secret_reads(ns, "db", since=mark)
    assert reads, "the audit log shows no get secrets/db"
    assert {e["user"]["username"] for e in reads} == {broker_identity.username}
    assert {e["impersonatedUser"]["username"] for e in reads} == {app.username}
    by_id = {e["auditID"]: e["responseStatus"]["code"] for e in reads}
    assert by_id[denied_id] == 403
    assert by_id[allowed_id] == 200


def test_impersonation_is_limited_to_the_named_secret(kube_admin, broker_identity, ns,
                                                     make_caller, canaries):
    app = make_caller(ns, "app")
    kube_admin.create_secret(ns, "db", string_data={"k": canaries.make()})
    kube_admin.create_secret(ns, "other", string_data={"k": canaries.make()})
    app.grant("db")
    as_broker = broker_identity.client
    path = f"/api/v1/namespaces/{ns}/secrets"
    assert eventually(lambda: as_broker.request(
        "GET", f"{path}/db", impersonate=(ns, "app")).status_code == 200)
    assert as_broker.request("GET", f"{path}/other", impersonate=(ns, "app")).status_code == 403
    assert as_broker.request("GET", path, impersonate=(ns, "app")).status_code == 403


def test_token_request_and_review_round_trip(kube_admin, broker_identity, ns, make_caller):
    make_caller(ns, "app")
    pod = kube_admin.create_pod(ns, "app-0", "app")
    token, expires = kube_admin.token_request(ns, "app", audiences=["secrets-broker"],
                                              expiration_seconds=600, bound_pod=pod)
    assert expires

    # The broker reviews with its own identity (system:auth-delegator).
    status = broker_identity.client.token_review(token, audiences=["secrets-broker"])
    assert status["authenticated"] is True, status
    assert status["user"]["username"] == sa_username(ns, "app")
    assert f"system:serviceaccounts:{ns}" in status["user"]["groups"]
    assert status["audiences"] == ["secrets-broker"]
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["app-0"]

    wrong = broker_identity.client.token_review(token, audiences=["sts.amazonaws.com"])
    assert not wrong.get("authenticated"), wrong


def test_broker_serviceaccount_cannot_read_secrets(kube, kube_admin, broker_identity, ns,
                                                   canaries):
    kube_admin.create_secret(ns, "db", string_data={"k": canaries.make()})
    as_broker = broker_identity.client
    assert as_broker.request("GET", f"/api/v1/namespaces/{ns}/secrets/db").status_code == 403
    assert as_broker.request("GET", f"/api/v1/namespaces/{ns}/secrets").status_code == 403
    sar = kube_admin.subject_access_review(broker_identity.namespace, broker_identity.name,
                                           "get", "secrets", "db", namespace=ns)
    assert sar["allowed"] is False
    for verb in ("get", "list", "watch"):
        out = kube.kubectl("auth", "can-i", verb, "secrets", "-n", ns,
                           "--as", broker_identity.username, check=False)
        assert out.stdout.strip() == "no", (verb, out.stdout, out.stderr)
    # What it may do: impersonate ServiceAccounts and create their tokens.
    for verb, resource in (("impersonate", "serviceaccounts"),
                           ("create", "serviceaccounts/token")):
        res, _, sub = resource.partition("/")
        sar = kube_admin.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": broker_identity.username,
                     "groups": ["system:serviceaccounts", "system:authenticated"],
                     "resourceAttributes": {"namespace": ns, "verb": verb, "resource": res,
                                            "subresource": sub, "name": "app"}}})
        assert sar["status"]["allowed"] is True, (verb, resource, sar["status"])


def test_moto_checks_signatures(aws, canaries):
    keys = aws.create_user()
    sid = f"sb-it/{uuid.uuid4().hex[:8]}/db"
    aws.create_secret(sid, string=canaries.make("moto-sig"))

    good = aws.client("secretsmanager", keys=keys)
    assert good.get_secret_value(SecretId=sid)["SecretString"].startswith("sbcanary-")

    bad = aws.client("secretsmanager", keys=(keys[0], "x" * 40))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bad.get_secret_value(SecretId=sid)
    assert error_code(err.value) == "SignatureDoesNotMatch"

    unknown = aws.client("secretsmanager", keys=("AKIAUNKNOWNKEY000000", "x" * 40))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        unknown.get_secret_value(SecretId=sid)
    assert error_code(err.value) == "InvalidClientTokenId"


def test_moto_enforces_policies(aws, canaries):
    keys = aws.create_user(actions=["secretsmanager:DescribeSecret"])
    sid = f"sb-it/{uuid.uuid4().hex[:8]}/db"
    aws.create_secret(sid, string=canaries.make())
    sm = aws.client("secretsmanager", keys=keys)
    assert sm.describe_secret(SecretId=sid)["Name"] == sid
    with pytest.raises(botocore.exceptions.ClientError) as err:
        sm.get_secret_value(SecretId=sid)
    assert error_code(err.value) in ("AccessDenied", "AccessDeniedException")


def test_moto_refuses_unsigned_requests(aws):
    r = requests.post(aws.endpoint + "/", timeout=10, data={
        "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
        "RoleArn": "arn:aws:iam::123456789012:role/none", "RoleSessionName": "s",
        "WebIdentityToken": "x"})
    assert r.status_code >= 400


def test_assume_role_with_web_identity(aws, kube_admin, ns, make_caller):
    make_caller(ns, "app")
    token, _ = kube_admin.token_request(ns, "app", audiences=["sts.amazonaws.com"])
    role = aws.create_role()
    r = aws.assume_role_with_web_identity(role, token, session="sb-it-session")
    assert r.status_code == 200, r.text
    creds = ET.fromstring(r.content).find(".//sts:Credentials", STS_NS)
    key_id = creds.find("sts:AccessKeyId", STS_NS).text
    secret = creds.find("sts:SecretAccessKey", STS_NS).text
    session_token = creds.find("sts:SessionToken", STS_NS).text
    assert key_id.startswith("ASIA") and secret and session_token
    assert creds.find("sts:Expiration", STS_NS).text

    sid = f"sb-it/{uuid.uuid4().hex[:8]}/db"
    aws.create_secret(sid, binary=b"\x00\xffbinary")
    sm = aws.client("secretsmanager", keys=(key_id, secret), session_token=session_token)
    assert sm.get_secret_value(SecretId=sid)["SecretBinary"] == b"\x00\xffbinary"

    # The session token is checked too.
    no_token = aws.client("secretsmanager", keys=(key_id, secret))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        no_token.get_secret_value(SecretId=sid)
    assert error_code(err.value) == "InvalidClientTokenId"


def test_version_stages(aws):
    sid = f"sb-it/{uuid.uuid4().hex[:8]}/db"
    v1 = aws.create_secret(sid, string='{"v": 1}')["VersionId"]
    v2 = aws.put_secret_value(sid, string='{"v": 2}', stages=["AWSPENDING"])
    sm = aws.client("secretsmanager")
    assert sm.get_secret_value(SecretId=sid)["VersionId"] == v1
    assert sm.get_secret_value(SecretId=sid, VersionStage="AWSPENDING")["SecretString"] == \
        '{"v": 2}'
    aws.move_stage(sid, "AWSCURRENT", v2, from_version=v1)
    # moto 5.2.5 keeps answering a request without VersionStage with the old
    # version after a stage move (it does not update its default version);
    # asked by stage it is right, and put_secret_value promotes correctly.
    assert sm.get_secret_value(SecretId=sid, VersionStage="AWSCURRENT")["VersionId"] == v2
    stages = aws.describe_secret(sid)["VersionIdsToStages"]
    assert stages[v1] == ["AWSPREVIOUS"] and "AWSCURRENT" in stages[v2]
    v3 = aws.put_secret_value(sid, string='{"v": 3}')
    assert sm.get_secret_value(SecretId=sid)["VersionId"] == v3


def test_proxy_counts_and_injects_faults(aws):
    sid = f"sb-it/{uuid.uuid4().hex[:8]}/db"
    aws.create_secret(sid, string="x")
    sm = aws.client("secretsmanager", via_proxy=True)
    mark = aws.proxy.mark()
    sm.get_secret_value(SecretId=sid)
    sm.describe_secret(SecretId=sid)
    assert aws.proxy.count(since=mark, action="GetSecretValue") == 1
    assert aws.proxy.count(since=mark, action="DescribeSecret") == 1

    aws.proxy.add_rule(Respond(503, b'{"__type":"ServiceUnavailable"}'), times=1,
                       action="GetSecretValue")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        sm.get_secret_value(SecretId=sid)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert sm.get_secret_value(SecretId=sid)["SecretString"] == "x"  # rule used up
    assert [r.status for r in aws.proxy.requests(since=mark, action="GetSecretValue")] == \
        [200, 503, 200]


def test_kube_proxy_relays_watch_streams(kube_admin, kube_proxy, ns, make_caller):
    app = make_caller(ns, "app")
    kube_admin.create_role(ns, "watch", [{"apiGroups": [""], "resources": ["secrets"],
                                          "verbs": ["list", "watch"]}])
    kube_admin.create_role_binding(ns, "watch", "watch", [(ns, "app")])
    token, _ = kube_admin.token_request(ns, app.sa)
    s = requests.Session()
    s.trust_env = False
    s.verify = kube_admin.session.verify
    s.headers["Authorization"] = f"Bearer {token}"
    url = f"{kube_proxy.url}/api/v1/namespaces/{ns}/secrets"
    listing = eventually(lambda: (lambda r: r if r.status_code == 200 else None)(
        s.get(url, timeout=10)))
    assert listing is not None
    rv = listing.json()["metadata"]["resourceVersion"]
    with s.get(url, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "20"},
               stream=True, timeout=30) as w:
        assert w.status_code == 200
        kube_admin.create_secret(ns, "late", string_data={"k": "v"})
        line = next(w.iter_lines())
    assert b'"ADDED"' in line and b'"late"' in line
    assert kube_proxy.count(path_re=f"/namespaces/{ns}/secrets\\?.*watch=1") == 1
