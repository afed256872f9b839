"""A real control plane for the tests: etcd and kube-apiserver on loopback
ports, RBAC on, a ServiceAccount token issuer, an admin client certificate
(O=system:masters) and an audit log of every request at Metadata level.

KubeClient is a small REST client on `requests` for the objects the tests
need; KubeAudit reads and filters the API server's audit log.
"""
import base64
import json
import subprocess
import time
import uuid
from pathlib import Path

import requests

from . import pki
from .net import LOOPBACK, free_port
from .procs import Proc

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"""


def sa_username(ns, sa):
    return f"system:serviceaccount:{ns}:{sa}"


def sa_groups(ns):
    """The groups the API server gives a ServiceAccount (a SubjectAccessReview
    does not add them by itself)."""
    return ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]


def impersonate_sa(ns, sa):
    """The one header the broker sends: the API server adds the groups."""
    return {"Impersonate-User": sa_username(ns, sa)}


class KubeError(Exception):
    def __init__(self, response):
        self.response = response
        self.status = response.status_code
        super().__init__(f"{response.request.method} {response.request.url} -> "
                         f"{response.status_code}: {response.text[:800]}")


class KubeClient:
    """REST calls as one principal: a client certificate or a bearer token.
    Methods that create or read objects raise KubeError on an unexpected
    status; `request` returns the raw response for tests that check codes."""

    def __init__(self, server, ca_path, cert=None, token=None, timeout=15):
        self.server = server.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace verify
        self.session.verify = str(ca_path)
        if cert:
            self.session.cert = cert
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def close(self):
        self.session.close()

    def with_token(self, token):
        return KubeClient(self.server, self.session.verify, token=token, timeout=self.timeout)

    def request(self, method, path, json_body=None, params=None, headers=None,
                impersonate=None, audit_id=None, content_type=None, data=None):
        hdrs = dict(headers or {})
        if impersonate:
            hdrs.update(impersonate_sa(*impersonate))
        if audit_id:
            hdrs["Audit-ID"] = audit_id
        if content_type:
            hdrs["Content-Type"] = content_type
        return self.session.request(method, self.server + path, json=json_body, data=data,
                                    params=params, headers=hdrs, timeout=self.timeout)

    def call(self, method, path, json_body=None, expect=(200, 201), **kw):
        r = self.request(method, path, json_body=json_body, **kw)
        if r.status_code not in expect:
            raise KubeError(r)
        return r.json() if r.content else None

    # Namespaces, ServiceAccounts, Pods.

    def create_namespace(self, name, labels=None):
        return self.call("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}}})

    def delete_namespace(self, name):
        self.call("DELETE", f"/api/v1/namespaces/{name}", expect=(200, 202, 404))

    def create_service_account(self, ns, name):
        return self.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})

    def delete_service_account(self, ns, name):
        self.call("DELETE", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}",
                  expect=(200, 202, 404))

    def create_pod(self, ns, name, sa):
        """A Pod that stays Pending (no kubelet): enough to bind tokens to."""
        return self.call("POST", f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": sa, "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "example.invalid/app:1"}]}})

    def delete_pod(self, ns, name):
        self.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0",
                  expect=(200, 202, 404))

    # RBAC.

    def create_role(self, ns, name, rules):
        return self.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name}, "rules": rules})

    def create_secret_reader_role(self, ns, name, secret_names=None, verbs=("get",)):
        """A Role allowing `verbs` on secrets (all of them, or the names)."""
        rule = {"apiGroups": [""], "resources": ["secrets"], "verbs": list(verbs)}
        if secret_names:
            rule["resourceNames"] = list(secret_names)
        return self.create_role(ns, name, [rule])

    def create_role_binding(self, ns, name, role, subjects, cluster_role=False):
        """subjects: (namespace, serviceaccount) pairs."""
        return self.call(
            "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            _binding("RoleBinding", name, role, subjects, cluster_role, ns))

    def delete_role_binding(self, ns, name):
        self.call("DELETE",
                  f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}",
                  expect=(200, 202, 404))

    def delete_role(self, ns, name):
        self.call("DELETE", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}",
                  expect=(200, 202, 404))

    def create_cluster_role(self, name, rules):
        return self.call("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": rules})

    def create_cluster_role_binding(self, name, cluster_role, subjects):
        return self.call("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                         _binding("ClusterRoleBinding", name, cluster_role, subjects, True))

    def grant_secret_read(self, ns, sa, secret_names=None, sa_ns=None, name=None):
        """Role + RoleBinding in ns letting sa_ns/sa (default: ns/sa) get the
        named secrets (or all). Returns the binding name."""
        name = name or f"read-{sa}-{uuid.uuid4().hex[:6]}"
        self.create_secret_reader_role(ns, name, secret_names)
        self.create_role_binding(ns, name, name, [(sa_ns or ns, sa)])
        return name

    # Secrets.

    def create_secret(self, ns, name, data=None, string_data=None, type_="Opaque",
                      labels=None):
        """data values may be bytes or str (sent base64-encoded, as the API wants)."""
        return self.call("POST", f"/api/v1/namespaces/{ns}/secrets",
                         _secret(name, data, string_data, type_, labels))

    def replace_secret(self, ns, name, data=None, string_data=None, type_="Opaque",
                       labels=None):
        """Replaces the secret's whole content (a new resourceVersion)."""
        body = _secret(name, data, string_data, type_, labels)
        body["metadata"]["resourceVersion"] = self.get_secret(ns, name)["metadata"][
            "resourceVersion"]
        return self.call("PUT", f"/api/v1/namespaces/{ns}/secrets/{name}", body)

    def get_secret(self, ns, name):
        return self.call("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")

    def delete_secret(self, ns, name):
        self.call("DELETE", f"/api/v1/namespaces/{ns}/secrets/{name}", expect=(200, 202, 404))

    # Authentication and authorization APIs.

    def token_request(self, ns, sa, audiences=None, expiration_seconds=3600, bound_pod=None):
        """TokenRequest; bound_pod is a Pod object (from create_pod).
        Returns (token, expirationTimestamp)."""
        spec = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        if bound_pod:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod",
                                      "name": bound_pod["metadata"]["name"],
                                      "uid": bound_pod["metadata"]["uid"]}
        out = self.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return out["status"]["token"], out["status"]["expirationTimestamp"]

    def token_review(self, token, audiences=None):
        spec = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        out = self.call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
        return out["status"]

    def subject_access_review(self, ns, sa, verb, resource, name=None, namespace=None):
        attrs = {"namespace": namespace or ns, "verb": verb, "resource": resource,
                 "group": ""}
        if name:
            attrs["name"] = name
        out = self.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": sa_username(ns, sa), "groups": sa_groups(ns),
                     "resourceAttributes": attrs}})
        return out["status"]


    def wait_granted(self, ns, sa, *names, timeout=15):
        """Waits until the authorizer lets ns/sa get each secret name (RBAC
        changes take a moment to reach it), so a broker never caches a
        denial the test did not mean."""
        until = time.monotonic() + timeout
        for name in names:
            while not self.subject_access_review(ns, sa, "get", "secrets", name)["allowed"]:
                assert time.monotonic() < until, f"RBAC for {ns}/{sa} on {name} never arrived"
                time.sleep(0.1)

def _binding(kind, name, role, subjects, cluster_role, ns=None):
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole" if cluster_role else "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "namespace": sns, "name": sa}
                     for sns, sa in subjects],
    }


def _b64(value):
    raw = value.encode() if isinstance(value, str) else bytes(value)
    return base64.b64encode(raw).decode()


def _secret(name, data, string_data, type_, labels):
    body = {"apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"name": name, "labels": labels or {}}}
    if data:
        body["data"] = {k: _b64(v) for k, v in data.items()}
    if string_data:
        body["stringData"] = dict(string_data)
    return body


class KubeAudit:
    """The API server's audit log (JSON lines, one event per stage). Filters
    match on: verb, resource, subresource, namespace, name, user (who
    authenticated), impersonated (the impersonated user, or False for "none"),
    audit_id, code, stage (default ResponseComplete; None for any)."""

    def __init__(self, path, sync_client):
        self.path = Path(path)
        self.sync_client = sync_client

    def mark(self):
        """A position: pass it as since= to see only later events."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def sync(self, timeout=10):
        """Waits until every request answered before this call is in the log:
        sends a marker request and waits for its own event."""
        marker = f"sb-audit-barrier-{uuid.uuid4()}"
        self.sync_client.request("GET", "/api/v1/namespaces/default", audit_id=marker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events(audit_id=marker, sync=False):
                return
            time.sleep(0.02)
        raise AssertionError(f"audit barrier {marker} did not appear in {self.path}")

    def events(self, since=0, sync=True, stage="ResponseComplete", **filters):
        if sync:
            self.sync()
        out = []
        with open(self.path, "rb") as f:
            f.seek(since)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a half-written last line
                ev = json.loads(line)
                if (stage is None or ev.get("stage") == stage) and _matches(ev, filters):
                    out.append(ev)
        return out

    def count(self, since=0, **filters):
        return len(self.events(since=since, **filters))

    def secret_reads(self, ns, name, since=0, **filters):
        """`get secrets/<name>` events in ns (what the broker costs the API)."""
        return self.events(since=since, verb="get", resource="secrets", namespace=ns,
                           name=name, **filters)


def _matches(ev, f):
    ref = ev.get("objectRef") or {}
    imp = (ev.get("impersonatedUser") or {}).get("username")
    checks = {
        "verb": ev.get("verb"), "resource": ref.get("resource"),
        "subresource": ref.get("subresource"), "namespace": ref.get("namespace"),
        "name": ref.get("name"), "user": (ev.get("user") or {}).get("username"),
        "audit_id": ev.get("auditID"),
        "code": (ev.get("responseStatus") or {}).get("code"),
    }
    for key, want in f.items():
        if key == "impersonated":
            if (imp or False) != want:
                return False
        elif key not in checks:
            raise TypeError(f"unknown audit filter {key!r}")
        elif checks[key] != want:
            return False
    return True


class KubeCluster:
    """etcd + kube-apiserver for one test session."""

    def __init__(self, bins, work_dir, log_dir, registry):
        self.bins = Path(bins)
        self.dir = Path(work_dir)
        self.log_dir = Path(log_dir)
        self.registry = registry
        self.procs = []

    def start(self, timeout=90):
        self._make_pki()
        self._start_etcd()
        self._start_apiserver()
        self.etcd.wait_ready(self._etcd_healthy, timeout, "healthy")
        self.apiserver.wait_ready(self._apiserver_ready, timeout, "ready (/readyz)")
        self.admin = KubeClient(self.server, self.ca_path, cert=self.admin_cert.pair)
        self.audit = KubeAudit(self.audit_path, self.admin)
        self._write_admin_kubeconfig()
        return self

    def stop(self):
        # The data is thrown away: no need to wait out a graceful shutdown.
        for proc in reversed(self.procs):
            proc.stop(timeout=2)

    def _make_pki(self):
        d = self.dir / "pki"
        self.ca = pki.CA(d, "kube-ca", cn="secrets-broker test kubernetes CA")
        self.ca_path = self.ca.cert_path
        self.serving = self.ca.issue(
            "kube-apiserver", cn="kube-apiserver", eku=(pki.SERVER_AUTH,),
            dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"], ips=["127.0.0.1", "10.0.0.1"])
        self.admin_cert = self.ca.issue("admin", cn="sb-it-admin",
                                        organizations=["system:masters"])
        sa_key = pki.new_key("rsa")
        self.sa_key_path = d / "sa.key"
        self.sa_pub_path = d / "sa.pub"
        self.sa_key_path.write_bytes(pki.key_pem(sa_key))
        self.sa_pub_path.write_bytes(pki.public_pem(sa_key))

    def _start_etcd(self):
        self.etcd_port, peer = free_port(), free_port()
        client_url, peer_url = f"http://{LOOPBACK}:{self.etcd_port}", f"http://{LOOPBACK}:{peer}"
        self.etcd_url = client_url
        self.etcd = Proc("etcd", [
            self.bins / "etcd", "--name", "sbit", "--data-dir", self.dir / "etcd",
            "--unsafe-no-fsync", "--log-level", "warn",
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"sbit={peer_url}",
        ], self.log_dir / "etcd.log", env=_peer_env(), registry=self.registry).start()
        self.procs.append(self.etcd)

    def _start_apiserver(self):
        self.port = free_port()
        self.server = f"https://{LOOPBACK}:{self.port}"
        self.audit_path = self.log_dir / "kube-audit.log"
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.apiserver = Proc("kube-apiserver", [
            self.bins / "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.port}", f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={self.serving.cert_path}",
            f"--tls-private-key-file={self.serving.key_path}",
            f"--client-ca-file={self.ca_path}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={self.sa_pub_path}",
            f"--service-account-signing-key-file={self.sa_key_path}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # No kube-controller-manager creates `default` ServiceAccounts.
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_path}",
            "--audit-log-mode=blocking",
        ], self.log_dir / "kube-apiserver.log", env=_peer_env(),
            registry=self.registry).start()
        self.procs.append(self.apiserver)

    def _etcd_healthy(self):
        r = requests.get(self.etcd_url + "/health", timeout=1)
        return r.status_code == 200 and r.json().get("health") == "true"

    def _apiserver_ready(self):
        r = requests.get(self.server + "/readyz", verify=str(self.ca_path),
                         cert=self.admin_cert.pair, timeout=2)
        return r.status_code == 200

    def _write_admin_kubeconfig(self):
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"
        write_kubeconfig(self.admin_kubeconfig, self.server, self.ca_path,
                         cert=self.admin_cert.pair, user="sb-it-admin")

    def kubectl(self, *args, input=None, check=True):
        """Runs the peer build's kubectl as the admin."""
        return subprocess.run([str(self.bins / "kubectl"), "--kubeconfig",
                               str(self.admin_kubeconfig), *map(str, args)],
                              input=input, capture_output=True, text=True, check=check,
                              timeout=60, env={**_peer_env(), "HOME": str(self.dir)})

    def client_for_token(self, token):
        return KubeClient(self.server, self.ca_path, token=token)


def write_kubeconfig(path, server, ca_path, token=None, cert=None, user="user",
                     namespace=None):
    """A kubeconfig with one cluster, user and (current) context. Written as
    JSON, which is valid YAML."""
    creds = {}
    if token:
        creds["token"] = token
    if cert:
        creds["client-certificate"], creds["client-key"] = cert
    ctx = {"cluster": "sb-it", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sb-it",
        "clusters": [{"name": "sb-it", "cluster": {
            "server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "sb-it", "context": ctx}],
    }
    Path(path).write_text(json.dumps(cfg, indent=2) + "\n")
    Path(path).chmod(0o600)
    return Path(path)


def _peer_env():
    """A small, explicit environment: nothing from the developer's shell (a
    KUBECONFIG or proxy setting) reaches the peers."""
    return {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8",
            "NO_PROXY": "*"}
