"""AWS for the tests: moto's server with request signatures checked, a
counting, fault-injecting proxy in front of it, and boto3 helpers.

moto checks SigV4 only after its first INITIAL_NO_AUTH_ACTION_COUNT requests.
The harness starts it at 0, spends a budget of exactly three free requests on
creating an admin IAM user (POST /moto-api/reset-auth 3), and from then on
every request must be correctly signed by a known key. moto cannot take an
unsigned call (the real STS AssumeRoleWithWebIdentity is one) once that is
on: `allow_unsigned(1)` lets the very next request through, whatever it is.
"""
import json
import re
import sys
import uuid
from pathlib import Path

import boto3
import botocore.config
import requests

from .net import LOOPBACK, free_port, port_open
from .procs import Proc
from .proxy import FaultProxy

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
SM_PREFIX = "secrets-broker"  # the broker's default AWS_SECRETS_MANAGER_PREFIX
READ_ACTIONS = ("secretsmanager:GetSecretValue", "secretsmanager:BatchGetSecretValue",
                "secretsmanager:DescribeSecret")


def policy(actions, resource="*"):
    # moto's secretsmanager authorizes against Resource "*" only.
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": list(actions), "Resource": resource}]})


WEB_IDENTITY_TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Federated": "*"},
    "Action": "sts:AssumeRoleWithWebIdentity"}]})


def error_code(client_error):
    """The AWS error code of a botocore ClientError. moto answers an
    authentication failure of a JSON-protocol service (Secrets Manager) with
    the query protocol's XML and HTTP 403, which botocore reports as code
    "403"; the real code is inside that XML."""
    err = client_error.response.get("Error", {})
    code = err.get("Code", "")
    found = re.search(r"<Code>([^<]+)</Code>", err.get("Message", ""))
    return found.group(1) if code.isdigit() and found else code


def moto_version():
    from importlib.metadata import version
    return version("moto")


class AwsPeer:
    """moto + proxy. `url` (the proxy) is what the broker talks to; the
    harness's own calls go to `endpoint` directly and are not counted."""

    def __init__(self, work_dir, log_dir, registry):
        self.dir = Path(work_dir)
        self.log_dir = Path(log_dir)
        self.registry = registry
        self.http = requests.Session()
        self.http.trust_env = False

    def start(self, timeout=60):
        self.port = free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        moto_server = Path(sys.executable).parent / "moto_server"
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(self.dir),
               "LANG": "C.UTF-8", "INITIAL_NO_AUTH_ACTION_COUNT": "0",
               "MOTO_ALLOW_NONEXISTENT_REGION": "false"}
        self.proc = Proc("moto", [moto_server, "-H", LOOPBACK, "-p", self.port],
                         self.log_dir / "moto.log", env=env, cwd=self.dir,
                         registry=self.registry).start()
        self.proc.wait_ready(lambda: port_open(self.port), timeout, "listening")
        self._bootstrap_admin()
        self.proxy = FaultProxy("moto", LOOPBACK, self.port,
                                log_path=self.log_dir / "moto-proxy.log").start()
        self.url = self.proxy.url
        return self

    def stop(self):
        if getattr(self, "proxy", None):
            self.proxy.stop()
        self.proc.stop(timeout=5)

    def allow_unsigned(self, count=1):
        """The next `count` requests moto receives skip signature and policy
        checks (all of them, from anyone); then checking resumes. Call it right
        before the broker's STS AssumeRoleWithWebIdentity, with nothing else
        talking to moto in between."""
        r = self.http.post(self.endpoint + "/moto-api/reset-auth", data=str(count), timeout=5)
        r.raise_for_status()

    def _bootstrap_admin(self):
        self.allow_unsigned(3)
        iam = self._client("iam", "AKIAUNSIGNEDBOOTSTRAP", "bootstrap")
        iam.create_user(UserName="sb-it-admin")
        iam.put_user_policy(UserName="sb-it-admin", PolicyName="admin",
                            PolicyDocument=policy(["*"]))
        key = iam.create_access_key(UserName="sb-it-admin")["AccessKey"]
        self.admin_keys = (key["AccessKeyId"], key["SecretAccessKey"])
        self.client("iam").get_user(UserName="sb-it-admin")  # signed: enforcement is on

    def _client(self, service, key_id, secret, session_token=None, endpoint=None):
        return boto3.client(
            service, endpoint_url=endpoint or self.endpoint, region_name=REGION,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
            aws_session_token=session_token,
            config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}))

    def client(self, service, keys=None, session_token=None, via_proxy=False):
        """A boto3 client, as the admin unless keys=(id, secret) are given."""
        key_id, secret = keys or self.admin_keys
        return self._client(service, key_id, secret, session_token,
                            self.url if via_proxy else self.endpoint)

    # IAM.

    def create_user(self, name=None, actions=READ_ACTIONS):
        """An IAM user allowed `actions` on "*"; returns (access key id, secret)."""
        name = name or f"user-{uuid.uuid4().hex[:8]}"
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if actions:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=policy(actions))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def create_role(self, name=None, actions=READ_ACTIONS):
        """An IAM role web identities may assume, allowed `actions` on "*".
        Returns its ARN."""
        name = name or f"role-{uuid.uuid4().hex[:8]}"
        iam = self.client("iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=WEB_IDENTITY_TRUST)[
            "Role"]["Arn"]
        if actions:
            iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=policy(actions))
        return arn

    def assume_role_with_web_identity(self, role_arn, token, session="sb-it", duration=3600):
        """The unsigned STS call, as an SDK makes it: a form POST (it spends
        one free request). Returns the requests.Response (XML)."""
        self.allow_unsigned(1)
        r = self.http.post(self.endpoint + "/", data={
            "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "RoleArn": role_arn, "RoleSessionName": session, "WebIdentityToken": token,
            "DurationSeconds": str(duration)}, timeout=10)
        return r

    # Secrets Manager.

    @staticmethod
    def secret_id(ns, name, prefix=SM_PREFIX):
        """The id the broker asks for under its default template
        {prefix}/{namespace}/{name}."""
        return f"{prefix}/{ns}/{name}" if prefix else f"{ns}/{name}"

    def create_secret(self, secret_id, string=None, binary=None):
        """Creates a secret (AWSCURRENT). Returns {ARN, Name, VersionId}."""
        kw = {"Name": secret_id}
        if string is not None:
            kw["SecretString"] = string if isinstance(string, str) else json.dumps(string)
        if binary is not None:
            kw["SecretBinary"] = binary
        return self.client("secretsmanager").create_secret(**kw)

    def put_secret_value(self, secret_id, string=None, binary=None, stages=None):
        """A new version (AWSCURRENT by default, or the given stages).
        Returns its VersionId."""
        kw = {"SecretId": secret_id}
        if string is not None:
            kw["SecretString"] = string if isinstance(string, str) else json.dumps(string)
        if binary is not None:
            kw["SecretBinary"] = binary
        if stages:
            kw["VersionStages"] = list(stages)
        return self.client("secretsmanager").put_secret_value(**kw)["VersionId"]

    def move_stage(self, secret_id, stage, to_version, from_version=None):
        """UpdateSecretVersionStage. moto 5.2.5 quirk: moving AWSCURRENT does
        not change what a GetSecretValue without VersionStage returns; use
        put_secret_value (default stages) to make a new current version."""
        kw = {"SecretId": secret_id, "VersionStage": stage, "MoveToVersionId": to_version}
        if from_version:
            kw["RemoveFromVersionId"] = from_version
        return self.client("secretsmanager").update_secret_version_stage(**kw)

    def describe_secret(self, secret_id):
        return self.client("secretsmanager").describe_secret(SecretId=secret_id)

    def delete_secret(self, secret_id):
        self.client("secretsmanager").delete_secret(SecretId=secret_id,
                                                    ForceDeleteWithoutRecovery=True)

    def broker_env(self, keys=None):
        """AWS settings for the broker: endpoints through the proxy, static
        keys of `keys` (None: no static keys, e.g. for web identity)."""
        env = {"AWS_REGION": REGION, "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.url,
               "AWS_ENDPOINT_URL_STS": self.url}
        if keys:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = keys
        return env

