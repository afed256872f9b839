"""SIGTERM (DESIGN.md section 10): readiness turns off, requests in flight
finish, and a request still waiting on a backend when the grace period
ends gets an answer (503) instead of taking the process down."""
import signal
import threading
import time

from harness.proxy import Delay, Hang


def test_grace_over_with_a_hung_backend_call(start_broker, make_ns, make_caller, kube_admin,
                                              kube_proxy, canaries):
    broker = start_broker(aws=False, via_kube_proxy=True,
                          env={"SECRETS_BACKEND": "k8s", "K8S_TIMEOUT_SECONDS": "60",
                               "REQUEST_TIMEOUT_SECONDS": "60", "SHUTDOWN_GRACE_SECONDS": "1"})
    ns = make_ns()
    kube_admin.create_secret(ns, "db", string_data={"p": canaries.make()})
    app = make_caller(ns)
    app.grant("db")
    rule = kube_proxy.add_rule(Hang(30), predicate=lambda rec: f"/namespaces/{ns}/" in rec.path)
    replies = []
    try:
        t = threading.Thread(target=lambda: replies.append(app.client(broker, 30).secret("db")))
        t.start()
        time.sleep(1.0)  # the read is now hanging at the proxy
        began = time.monotonic()
        broker.signal(signal.SIGTERM)
        assert broker.wait_exit(timeout=10) == 0
        assert time.monotonic() - began < 6
        t.join(10)
    finally:
        kube_proxy.remove_rule(rule)
    assert replies and replies[0].status == 503, replies
    assert replies[0].json()["error"]["code"] == "shutting_down"


def test_readiness_turns_off_and_in_flight_requests_finish(start_broker, make_ns, make_caller,
                                                           kube_admin, kube_proxy, canaries):
    broker = start_broker(aws=False, via_kube_proxy=True,
                          env={"SECRETS_BACKEND": "k8s", "SHUTDOWN_GRACE_SECONDS": "10"})
    ns = make_ns()
    value = canaries.make()
    kube_admin.create_secret(ns, "db", string_data={"p": value})
    app = make_caller(ns)
    app.grant("db")
    rule = kube_proxy.add_rule(Delay(2.0), predicate=lambda rec: f"/namespaces/{ns}/" in rec.path)
    replies = []
    try:
        client = app.client(broker, 30)
        t = threading.Thread(target=lambda: replies.append(client.secret("db", "p")))
        t.start()
        time.sleep(0.5)
        broker.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert broker.readyz().status_code == 503
        t.join(15)
        assert broker.wait_exit(timeout=15) == 0
    finally:
        kube_proxy.remove_rule(rule)
    assert replies and replies[0].status == 200 and replies[0].body == value.encode()
