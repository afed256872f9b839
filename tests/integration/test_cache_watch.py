"""CACHE_INVALIDATION=watch against a real API server: a changed Secret is
served within a second even with a 300 s TTL; when the watch connection is
cut, the watch resumes from the resourceVersion it had (no new list) and a
Secret deleted meanwhile is not served on; a 410 makes it list again and
drop what it cached; and while the watch is down the TTL still bounds
staleness.

The broker runs as its own ServiceAccount with the extra RBAC the watch
needs (list and watch on secrets, docs/identity-and-rbac.md), behind a fault proxy
this module can cut."""
import json
import ssl
import time
import uuid

import pytest

from harness.kube import write_kubeconfig
from harness.proxy import FaultProxy, Respond, _close
from harness.wait import eventually

K8S_WATCH = {"SECRETS_BACKEND": "k8s", "CACHE_INVALIDATION": "watch"}
WATCH_NS = "secrets-broker-system"
WATCH_SA = "secrets-broker-watch"
WATCH_RULES = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]
GONE = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "Expired", "code": 410,
                   "message": "too old resource version"}).encode()


class CuttableProxy(FaultProxy):
    """The harness's fault proxy, plus cutting every open connection (a
    watch stream included) as a network failure would."""

    def cut(self):
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            _close(sock)


@pytest.fixture(scope="module")
def watch_proxy(kube, log_dir):
    listen = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    listen.load_cert_chain(*kube.serving.pair)
    upstream = ssl.create_default_context(cafile=str(kube.ca_path))
    proxy = CuttableProxy("kube-watch", "127.0.0.1", kube.port, listen_tls=listen,
                          upstream_tls=upstream, upstream_server_name="127.0.0.1",
                          log_path=log_dir / "peers" / "kube-watch-proxy.log").start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def watch_identity(kube, broker_identity, run):
    """A broker ServiceAccount with the product's RBAC plus list/watch on
    secrets; returns a function writing a kubeconfig for a server URL."""
    admin = kube.admin
    admin.create_service_account(WATCH_NS, WATCH_SA)
    admin.create_cluster_role_binding(f"{WATCH_SA}-base", broker_identity.name,
                                      [(WATCH_NS, WATCH_SA)])
    admin.create_cluster_role_binding(f"{WATCH_SA}:auth-delegator", "system:auth-delegator",
                                      [(WATCH_NS, WATCH_SA)])
    admin.create_cluster_role(f"{WATCH_SA}-secrets-metadata", WATCH_RULES)
    admin.create_cluster_role_binding(f"{WATCH_SA}-secrets-metadata",
                                      f"{WATCH_SA}-secrets-metadata", [(WATCH_NS, WATCH_SA)])
    token, _ = admin.token_request(WATCH_NS, WATCH_SA, None, 24 * 3600)

    def kubeconfig(server):
        path = run.run_dir / f"watch-{uuid.uuid4().hex[:8]}.kubeconfig"
        return write_kubeconfig(path, server, kube.ca_path, token=token, user=WATCH_SA)
    return kubeconfig


@pytest.fixture
def watch_broker(start_broker, watch_identity, watch_proxy, kube):
    """start(env=None, direct=False): a broker watching through the proxy
    (HTTP/1.1), or straight to the API server (HTTP/2) when direct."""
    def start(env=None, direct=False):
        kubeconfig = watch_identity(kube.server if direct else watch_proxy.url)
        return start_broker(env={**K8S_WATCH, "KUBECONFIG": str(kubeconfig), **(env or {})},
                            kube=None, aws=False)
    return start



def value_of(reply):
    return reply.json()["data"]["password"] if reply.status == 200 else None


def watching(proxy, since=0):
    """Watch requests the broker made (through the proxy) since a mark."""
    return proxy.requests(since=since, path_re=r"[?&]watch=1")


def lists(proxy, since=0):
    return proxy.requests(since=since, path_re=r"/secrets\?limit=1$")


def wait_watch_open(proxy, since=0):
    """Until a watch request is being streamed (the API server answered 200)."""
    assert eventually(lambda: any(r.status == 200 for r in watching(proxy, since))), \
        "the broker never opened a watch"


def setup_secret(ns, make_caller, kube_admin, value, name="db"):
    a = make_caller(ns, "a")
    kube_admin.create_secret(ns, name, string_data={"password": value})
    a.grant(name)
    assert eventually(lambda: kube_admin.subject_access_review(
        ns, "a", "get", "secrets", name=name).get("allowed"))
    return a


def test_changed_secret_is_served_within_a_second(watch_broker, watch_proxy, ns, make_caller,
                                                  kube_admin, canaries):
    v1, v2 = canaries.make("watch-v1"), canaries.make("watch-v2")
    a = setup_secret(ns, make_caller, kube_admin, v1)
    mark = watch_proxy.mark()
    broker = watch_broker({"CACHE_TTL_SECONDS": "300"})
    wait_watch_open(watch_proxy, mark)
    client = a.client(broker)
    assert value_of(client.secret("db")) == v1
    assert client.secret("db").json()["cache_hit"] is True

    kube_admin.replace_secret(ns, "db", string_data={"password": v2})
    changed = time.monotonic()
    assert eventually(lambda: value_of(client.secret("db")) == v2, timeout=5.0)
    assert time.monotonic() - changed <= 1.0
    # Only metadata was asked for: the list and watch used the
    # PartialObjectMetadata representations.
    for rec in watching(watch_proxy, mark) + lists(watch_proxy, mark):
        assert "as=PartialObjectMetadata" in rec.header("accept"), rec.header("accept")


def test_watch_over_http2_straight_to_the_api_server(watch_broker, ns, make_caller, kube,
                                                      kube_admin, canaries):
    v1, v2, v3 = (canaries.make(f"h2-v{i}") for i in (1, 2, 3))
    a = setup_secret(ns, make_caller, kube_admin, v1)
    mark = kube.audit.mark()
    broker = watch_broker({"CACHE_TTL_SECONDS": "300"}, direct=True)
    assert eventually(lambda: kube.audit.count(since=mark, verb="watch", resource="secrets",
                                               stage="ResponseStarted") >= 1)
    client = a.client(broker)
    assert value_of(client.secret("db")) == v1
    for new in (v2, v3):  # the stream stays open across events
        kube_admin.replace_secret(ns, "db", string_data={"password": new})
        changed = time.monotonic()
        assert eventually(lambda: value_of(client.secret("db")) == new, timeout=5.0)
        assert time.monotonic() - changed <= 1.0
    watches = kube.audit.events(since=mark, verb="watch", resource="secrets",
                                stage="ResponseStarted")
    assert len(watches) == 1, "the watch reconnected between events"


@pytest.mark.asan
def test_cut_watch_resumes_from_its_version_and_drops_a_deleted_secret(
        watch_broker, watch_proxy, ns, make_caller, kube_admin, canaries):
    v1 = canaries.make("watch-deleted")
    a = setup_secret(ns, make_caller, kube_admin, v1)
    mark = watch_proxy.mark()
    broker = watch_broker({"CACHE_TTL_SECONDS": "300"})
    wait_watch_open(watch_proxy, mark)
    client = a.client(broker)
    assert value_of(client.secret("db")) == v1
    assert client.secret("db").json()["cache_hit"] is True

    # The watch goes down and stays down while the secret is deleted.
    down = watch_proxy.add_rule(Respond(503, b'{"kind":"Status","code":503}'),
                                path_re=r"[?&]watch=1")
    cut_mark = watch_proxy.mark()
    watch_proxy.cut()
    kube_admin.delete_secret(ns, "db")
    assert eventually(lambda: len(watching(watch_proxy, cut_mark)) >= 2, timeout=10.0), \
        "the broker did not retry the watch"
    watch_proxy.remove_rule(down)

    # It comes back from the version it had, replays the deletion, and the
    # value is gone long before the 300 s TTL.
    assert eventually(lambda: client.secret("db").status == 404, timeout=15.0)
    resumed = [r for r in watching(watch_proxy, cut_mark) if r.status == 200]
    assert resumed and "resourceVersion=" in resumed[0].path
    assert "resourceVersion=&" not in resumed[0].path
    assert lists(watch_proxy, cut_mark) == [], "a resumable watch listed again"
    assert v1.encode() not in client.secret("db").body


def test_gone_lists_again_and_drops_the_cache(watch_broker, watch_proxy, ns, make_caller,
                                              kube_admin, canaries):
    v1, v2 = canaries.make("gone-v1"), canaries.make("gone-v2")
    a = setup_secret(ns, make_caller, kube_admin, v1)
    mark = watch_proxy.mark()
    broker = watch_broker({"CACHE_TTL_SECONDS": "300"})
    wait_watch_open(watch_proxy, mark)
    client = a.client(broker)
    assert value_of(client.secret("db")) == v1

    # While the watch is cut, the secret changes and the server has
    # forgotten the broker's version: 410 Gone.
    watch_proxy.add_rule(Respond(410, GONE), path_re=r"[?&]watch=1", times=1)
    cut_mark = watch_proxy.mark()
    watch_proxy.cut()
    kube_admin.replace_secret(ns, "db", string_data={"password": v2})
    assert eventually(lambda: lists(watch_proxy, cut_mark), timeout=10.0), "no new list after 410"
    wait_watch_open(watch_proxy, cut_mark)
    assert value_of(client.secret("db")) == v2


def test_ttl_bounds_staleness_while_the_watch_is_down(watch_broker, watch_proxy, ns,
                                                       make_caller, kube_admin, canaries):
    v1, v2 = canaries.make("down-v1"), canaries.make("down-v2")
    a = setup_secret(ns, make_caller, kube_admin, v1)
    mark = watch_proxy.mark()
    broker = watch_broker({"CACHE_TTL_SECONDS": "2"})
    wait_watch_open(watch_proxy, mark)
    client = a.client(broker)
    assert value_of(client.secret("db")) == v1

    down = watch_proxy.add_rule(Respond(503, b'{"kind":"Status","code":503}'),
                                path_re=r"[?&]watch=1")
    try:
        watch_proxy.cut()
        kube_admin.replace_secret(ns, "db", string_data={"password": v2})
        changed = time.monotonic()
        assert eventually(lambda: value_of(client.secret("db")) == v2, timeout=6.0)
        assert time.monotonic() - changed <= 2.0 + 0.5
    finally:
        watch_proxy.remove_rule(down)
