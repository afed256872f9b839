"""The broker's own Kubernetes identity, with exactly what the product needs:
impersonate ServiceAccounts, create ServiceAccount tokens (AUTH_MODE=
tokenrequest), and the built-in system:auth-delegator (TokenReview and
SubjectAccessReview). No permission on secrets: every read is the caller's.

It hands the broker a kubeconfig or an "in-cluster" directory (token,
ca.crt, namespace) with the environment that points at it.
"""
import os
from pathlib import Path

from .kube import write_kubeconfig

NAMESPACE = "secrets-broker-system"
NAME = "secrets-broker"
CLUSTER_ROLE_RULES = [
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
    {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
]
TOKEN_SECONDS = 24 * 3600


class BrokerIdentity:
    def __init__(self, cluster, work_dir):
        self.cluster = cluster
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.namespace = NAMESPACE
        self.name = NAME
        self.username = f"system:serviceaccount:{NAMESPACE}:{NAME}"
        self._seq = 0

    def setup(self):
        admin = self.cluster.admin
        admin.create_namespace(NAMESPACE)
        admin.create_service_account(NAMESPACE, NAME)
        admin.create_cluster_role(NAME, CLUSTER_ROLE_RULES)
        admin.create_cluster_role_binding(NAME, NAME, [(NAMESPACE, NAME)])
        admin.create_cluster_role_binding(f"{NAME}:auth-delegator", "system:auth-delegator",
                                          [(NAMESPACE, NAME)])
        self.token = self.new_token()
        self.kubeconfig = self.write_kubeconfig(self.dir / "broker.kubeconfig")
        self.client = self.cluster.client_for_token(self.token)
        return self

    def new_token(self, expiration_seconds=TOKEN_SECONDS, audiences=None):
        token, _ = self.cluster.admin.token_request(NAMESPACE, NAME, audiences,
                                                    expiration_seconds)
        return token

    def write_kubeconfig(self, path, server=None, token=None, ca_path=None):
        """A kubeconfig for the broker (server: e.g. a proxy's URL)."""
        return write_kubeconfig(path, server or self.cluster.server,
                                ca_path or self.cluster.ca_path, token=token or self.token,
                                user=NAME, namespace=NAMESPACE)

    def incluster(self, port=None, host="127.0.0.1", token=None):
        """A fresh service-account directory and the environment naming it
        (KUBERNETES_SERVICE_HOST/PORT, K8S_SERVICEACCOUNT_DIR). Returns
        (env, directory); rotate the token with write_token(directory, t)."""
        self._seq += 1
        sa_dir = self.dir / f"incluster-{self._seq}"
        sa_dir.mkdir()
        (sa_dir / "ca.crt").write_bytes(Path(self.cluster.ca_path).read_bytes())
        (sa_dir / "namespace").write_text(NAMESPACE)
        write_token(sa_dir, token or self.token)
        env = {"KUBERNETES_SERVICE_HOST": host,
               "KUBERNETES_SERVICE_PORT": str(port or self.cluster.port),
               "K8S_SERVICEACCOUNT_DIR": str(sa_dir)}
        return env, sa_dir


def write_token(sa_dir, token):
    """Replaces the token file atomically, as the kubelet does."""
    sa_dir = Path(sa_dir)
    tmp = sa_dir / ".token.tmp"
    tmp.write_text(token)
    os.chmod(tmp, 0o600)
    tmp.replace(sa_dir / "token")
