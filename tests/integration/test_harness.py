"""The harness checks itself: the broker fixture (with a stand-in broker,
fakes/fake_broker.py), the test PKI against a real TLS stack, the kubeconfig
and in-cluster credentials it hands the broker, the canary scan, and the
reaping of processes a killed run left behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness import procs
from harness.canary import CanaryRegistry
from harness.pki import BAD_KINDS, spiffe_id

FAKE = Path(__file__).parent / "fakes" / "fake_broker.py"
TLS_REJECTED = ("expired", "not_yet_valid", "unknown_ca", "no_client_auth")


def test_broker_that_exits_early_fails_with_its_stderr(start_broker):
    with pytest.raises(pytest.fail.Exception) as err:
        start_broker(binary=FAKE, env={"FAKE_BROKER_MODE": "exit-early"}, kube=None,
                     aws=False, check_exit=False)
    assert "exited with status 3" in str(err.value)
    assert "refusing to start on purpose" in str(err.value)


def test_missing_broker_binary_is_named(start_broker, tmp_path):
    with pytest.raises(pytest.fail.Exception) as err:
        start_broker(binary=tmp_path / "nope", kube=None, aws=False)
    assert "does not exist" in str(err.value)


def test_fake_broker_over_mtls_with_kubeconfig(start_broker, pki, broker_identity):
    broker = start_broker(binary=FAKE)
    good = broker.client(pki.client("shop", "app"))
    r = good.get("/v1/whoami")
    assert r.status == 200 and r.json()["uris"] == [spiffe_id("shop", "app")]
    assert broker.audit_records()[-1]["uris"] == [spiffe_id("shop", "app")]
    assert good.get("/v1/kube-whoami").json()["username"] == broker_identity.username

    for kind in TLS_REJECTED:
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            broker.client(pki.bad(kind)).get("/v1/whoami")
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        broker.client(None).get("/v1/whoami")
    # These pass TLS; refusing them is the broker's own job.
    uris = broker.client(pki.bad("two_uri_sans")).get("/v1/whoami").json()["uris"]
    assert len(uris) == 2
    uris = broker.client(pki.bad("wrong_trust_domain")).get("/v1/whoami").json()["uris"]
    assert uris == ["spiffe://evil.example/ns/bad/sa/app"]
    assert broker.client(pki.bad("ca_as_leaf")).get("/v1/whoami").status == 200
    assert set(BAD_KINDS) == set(TLS_REJECTED) | {"two_uri_sans", "wrong_trust_domain",
                                                  "ca_as_leaf"}


def test_fake_broker_in_cluster_through_the_kube_proxy(start_broker, pki, broker_identity,
                                                       kube_proxy):
    mark = kube_proxy.mark()
    broker = start_broker(binary=FAKE, kube="incluster", via_kube_proxy=True, aws=False)
    assert "KUBECONFIG" not in broker.env
    r = broker.client(pki.client("shop", "app")).get("/v1/kube-whoami")
    assert r.json()["username"] == broker_identity.username
    assert kube_proxy.count(since=mark, path_re="selfsubjectreviews") == 1


def test_minted_certificates(pki):
    intermediate = pki.ca.intermediate("team-ca")
    leaf = pki.mint("odd", issuer=intermediate, uris=["spiffe://cluster.local/ns/a/sa/b"],
                    cn="system:serviceaccount:a:b", eku=None, key_kind="rsa")
    assert leaf.pem.count(b"BEGIN CERTIFICATE") == 2  # leaf + intermediate
    out = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca_bundle), "-untrusted",
                          str(leaf.cert_path), str(leaf.cert_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_canary_scan_finds_raw_hex_and_base64(tmp_path):
    import base64
    reg = CanaryRegistry()
    a, b, c = reg.make("a"), reg.make("b"), reg.make("c")
    reg.make("unused")
    (tmp_path / "x.log").write_text(f"leak {a}\n")
    (tmp_path / "y.log").write_text(f"hex {b.encode().hex()}\n")
    (tmp_path / "z.log").write_bytes(base64.b64encode(c.encode() + b"\x00tail"))
    found = {v for _, v in reg.scan([tmp_path])}
    assert found == {a, b, c}


def test_stale_processes_are_reaped(tmp_path):
    root = tmp_path / "runs"
    run_dir = procs.new_run_dir(root)
    gone = subprocess.Popen(["true"])
    gone.wait()
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (run_dir / "owner").write_text(f"{gone.pid} 1\n")
        (run_dir / "pids").write_text(
            f"{sleeper.pid} {procs.start_time(sleeper.pid)} sleep\n"
            f"{os.getpid()} 1 not-this-one\n")
        reaped = procs.reap_stale_runs(root)
        assert sleeper.wait(5) == -signal.SIGKILL
        assert len(reaped) == 1 and not run_dir.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


def test_live_runs_are_left_alone(tmp_path):
    root = tmp_path / "runs"
    run_dir = procs.new_run_dir(root)
    procs.Registry(run_dir)  # owned by this (live) process
    assert procs.reap_stale_runs(root) == [] and run_dir.exists()


def test_proc_stop_escalates_to_sigkill(tmp_path):
    stubborn = procs.Proc("stubborn", [sys.executable, "-c",
                                       "import signal,time\n"
                                       "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                       "print('sig' + 'term ignored', flush=True)\n"
                                       "time.sleep(60)"],
                          tmp_path / "stubborn.log").start()
    log = tmp_path / "stubborn.log"
    stubborn.wait_ready(lambda: b"sigterm ignored" in log.read_bytes(), 10)
    t0 = time.monotonic()
    assert stubborn.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
