"""TLS reload (issue 6, DESIGN.md section 10): the server certificate, key
and client CA bundle are read again when they change on disk, laid out
here as the kubelet lays out a Secret volume (versioned directories, an
atomic "..data" symlink swap, file symlinks through it).

- Rotating the server certificate, then the CA (both CAs trusted, new
  server certificate; then the old CA dropped), while requests run: no
  request fails, and new handshakes present the new certificate within 5 s.
- Bad new material (a key that does not match, a bundle with no
  certificate) keeps the old, and is reported in a log line and a metric.
- A session made before a CA change is not resumed after it.

Every secret value is a canary."""
import datetime
import os
import ssl
import threading
import time

from cryptography import x509

import rawhttp
from harness.pki import CA, SERVER_AUTH, cert_pem, spiffe_id
from harness.wait import eventually

PICKUP = 5.0  # new handshakes present new material within this (the issue's bound)
K8S_ONLY = {"SECRETS_BACKEND": "k8s"}


class SecretVolume:
    """A directory as the kubelet writes a mounted Secret: each update is a
    new ..<timestamp> directory, ..data is swapped to it with one rename,
    and the visible names are symlinks through ..data."""

    def __init__(self, root, files):
        self.root = root
        self.root.mkdir(parents=True)
        self.version = 0
        self.current = None
        self.update(files)
        for name in files:
            os.symlink(f"..data/{name}", self.root / name)

    def update(self, files):
        self.version += 1
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y_%m_%d_%H_%M_%S")
        target = self.root / f"..{stamp}.{self.version}"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
            (target / name).chmod(0o600)
        tmp = self.root / "..data_tmp"
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / "..data")
        old, self.current = self.current, target
        if old is not None:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def path(self, name):
        return self.root / name


def server_files(ca_certs, server):
    return {"ca.crt": b"".join(cert_pem(c) for c in ca_certs),
            "tls.crt": server.cert_path.read_bytes(),
            "tls.key": server.key_path.read_bytes()}


def issue_server(ca, name):
    return ca.issue(name, dns=["localhost"], ips=["127.0.0.1"], cn="localhost",
                    eku=(SERVER_AUTH,))


def volume_env(vol):
    return {**K8S_ONLY,
            "MTLS_CA_CERT_PATH": str(vol.path("ca.crt")),
            "MTLS_SERVER_CERT_PATH": str(vol.path("tls.crt")),
            "MTLS_SERVER_KEY_PATH": str(vol.path("tls.key"))}


def trust_file(path, *cas):
    path.write_bytes(b"".join(cert_pem(ca.cert) for ca in cas))
    return path


def get(port, ctx, path, session=None):
    """One request on a new connection: (status, body, server certificate
    serial, session, session reused)."""
    conn = rawhttp.RawConn(port, ctx, session=session)
    try:
        serial = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True)) \
            .serial_number
        conn.send(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        status, _, body = conn.response()
        return status, body, serial, conn.sock.session, conn.sock.session_reused
    finally:
        conn.close()


def setup_secret(ns, make_caller, kube_admin, canaries):
    value = canaries.make("tls-reload")
    kube_admin.create_secret(ns, "db", string_data={"p": value})
    app = make_caller(ns)
    app.grant("db")
    kube_admin.wait_granted(ns, "app", "db")
    return value


class Load:
    """Threads that read the secret until stopped, each on a new connection
    (a full handshake every time, so every reload is exercised) or on one
    keep-alive connection; the client certificate they present is switched
    with use(). Records every failure."""

    def __init__(self, port, trust, path, value, ctx):
        self.port, self.trust, self.path, self.value = port, trust, path, value
        self.ctx = ctx
        self.ok = 0
        self.failures = []
        self.serials = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.fresh) for _ in range(2)]
        self.threads.append(threading.Thread(target=self.keep_alive))

    def use(self, ctx):
        with self.lock:
            self.ctx = ctx

    def record(self, status, body, serial=None):
        with self.lock:
            if status == 200 and body == self.value.encode():
                self.ok += 1
                if serial is not None:
                    self.serials.add(serial)
            else:
                self.failures.append((status, body[:200]))

    def fresh(self):
        while not self.stop.is_set():
            with self.lock:
                ctx = self.ctx
            try:
                status, body, serial, _, _ = get(self.port, ctx, self.path)
                self.record(status, body, serial)
            except Exception as e:  # noqa: BLE001 - any failure counts
                self.record(repr(e), b"")
            time.sleep(0.01)

    def keep_alive(self):
        conn, ctx = None, None
        while not self.stop.is_set():
            with self.lock:
                want = self.ctx
            try:
                if conn is None or want is not ctx:
                    if conn:
                        conn.close()
                    ctx = want
                    conn = rawhttp.RawConn(self.port, ctx)
                conn.send(f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                status, _, body = conn.response()
                self.record(status, body)
            except Exception as e:  # noqa: BLE001 - any failure counts
                self.record(repr(e), b"")
                conn = None
            time.sleep(0.01)
        if conn:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_rotation_under_load_fails_no_request(start_broker, ns, make_caller, kube_admin,
                                               canaries, pki, run):
    value = setup_secret(ns, make_caller, kube_admin, canaries)
    work = run.run_dir / f"tls-rotation-{ns}"
    work.mkdir()
    ca2 = CA(work / "ca2", "callers-ca-2", cn="secrets-broker test callers CA 2")
    client1 = pki.client(ns, "app")
    client2 = ca2.issue(f"{ns}-app", uris=[spiffe_id(ns, "app", pki.trust_domain)])
    server1 = pki.server
    server2 = issue_server(pki.ca, "broker-server-rotated")
    server3 = issue_server(ca2, "broker-server-ca2")
    trust = trust_file(work / "client-trust.crt", pki.ca, ca2)

    vol = SecretVolume(work / "tls", server_files([pki.ca.cert], server1))
    broker = start_broker(aws=False, env=volume_env(vol))  # the default reload interval
    ctx1 = rawhttp.tls_context(trust, client1)
    ctx2 = rawhttp.tls_context(trust, client2)
    path = "/v1/secrets/db/p"

    def presented(issued, ctx):
        return lambda: get(broker.port, ctx, path)[2] == issued.cert.serial_number

    picked_up = []
    with Load(broker.port, trust, path, value, ctx1) as load:
        time.sleep(1.0)
        # 1. A new server certificate from the same CA.
        t0 = time.monotonic()
        vol.update(server_files([pki.ca.cert], server2))
        assert eventually(presented(server2, ctx1), PICKUP), "server certificate not picked up"
        picked_up.append(time.monotonic() - t0)
        time.sleep(0.5)

        # 2. CA rotation, first step: both CAs trusted, a server certificate
        # from the new one. Callers move to certificates from the new CA.
        t0 = time.monotonic()
        vol.update(server_files([pki.ca.cert, ca2.cert], server3))
        assert eventually(presented(server3, ctx1), PICKUP), "new CA bundle not picked up"
        picked_up.append(time.monotonic() - t0)
        time.sleep(0.5)
        load.use(ctx2)
        time.sleep(0.5)

        # 3. Second step: the old CA is dropped; its client certificates are
        # refused on new handshakes, the new ones served throughout.
        t0 = time.monotonic()
        vol.update(server_files([ca2.cert], server3))

        def old_ca_refused():
            try:
                get(broker.port, ctx1, path)
                return False
            except (ssl.SSLError, ConnectionError, EOFError):
                return True
        assert eventually(old_ca_refused, PICKUP), "the old CA was still trusted"
        picked_up.append(time.monotonic() - t0)
        time.sleep(1.0)

    print(f"\n{load.ok} requests during three rotations, picked up after "
          + ", ".join(f"{s:.1f} s" for s in picked_up))
    assert not load.failures, load.failures[:5]
    assert load.ok >= 50
    assert {server1.cert.serial_number, server2.cert.serial_number,
            server3.cert.serial_number} <= load.serials
    assert broker.metric("secrets_broker_tls_reloads_total", result="ok") == 3
    assert broker.metric("secrets_broker_tls_reloads_total", result="failed") == 0
    assert any(r.get("module") == "tls" and "reloaded" in r.get("msg", "")
               for r in broker.log_records())


def test_bad_material_keeps_the_old(start_broker, ns, make_caller, kube_admin, canaries, pki,
                                    run):
    value = setup_secret(ns, make_caller, kube_admin, canaries)
    work = run.run_dir / f"tls-bad-{ns}"
    work.mkdir()
    vol = SecretVolume(work / "tls", server_files([pki.ca.cert], pki.server))
    broker = start_broker(aws=False,
                          env={**volume_env(vol), "TLS_RELOAD_INTERVAL_SECONDS": "1"})
    ctx = rawhttp.tls_context(pki.ca_bundle, pki.client(ns, "app"))
    path = "/v1/secrets/db/p"
    other = issue_server(pki.ca, "broker-server-next")

    def failed_reloads():
        return broker.metric("secrets_broker_tls_reloads_total", result="failed")

    def still_old():
        status, body, serial, _, _ = get(broker.port, ctx, path)
        assert (status, body) == (200, value.encode())
        assert serial == pki.server.cert.serial_number

    # A key that is not the certificate's.
    mismatched = server_files([pki.ca.cert], other)
    mismatched["tls.key"] = pki.server.key_path.read_bytes()
    vol.update(mismatched)
    assert eventually(lambda: failed_reloads() == 1, PICKUP)
    still_old()
    # A CA bundle with no certificate in it.
    empty_bundle = server_files([pki.ca.cert], other)
    empty_bundle["ca.crt"] = b"not a certificate\n"
    vol.update(empty_bundle)
    assert eventually(lambda: failed_reloads() == 2, PICKUP)
    time.sleep(2.5)  # the same bad files are not retried on every check
    assert failed_reloads() == 2
    still_old()

    rejected = [r for r in broker.log_records()
                if r.get("module") == "tls" and "rejected" in r.get("msg", "")]
    assert len(rejected) == 2 and all(r["level"] == "error" for r in rejected), rejected
    assert "MTLS_SERVER_CERT_PATH/MTLS_SERVER_KEY_PATH" in rejected[0]["msg"]
    assert "MTLS_CA_CERT_PATH" in rejected[1]["msg"]

    # Good files again: picked up.
    vol.update(server_files([pki.ca.cert], other))
    assert eventually(lambda: get(broker.port, ctx, path)[2] == other.cert.serial_number,
                      PICKUP)
    assert broker.metric("secrets_broker_tls_reloads_total", result="ok") == 1


def test_no_resumption_across_a_ca_change(start_broker, ns, make_caller, kube_admin, canaries,
                                          pki, run):
    value = setup_secret(ns, make_caller, kube_admin, canaries)
    work = run.run_dir / f"tls-resume-{ns}"
    work.mkdir()
    ca2 = CA(work / "ca2", "callers-ca-2", cn="secrets-broker test callers CA 2")
    vol = SecretVolume(work / "tls", server_files([pki.ca.cert], pki.server))
    broker = start_broker(aws=False,
                          env={**volume_env(vol), "TLS_RELOAD_INTERVAL_SECONDS": "1"})
    # Python resumes a session only through the context that made it: one
    # context, trusting the server certificates of both CAs, throughout.
    trust = trust_file(work / "client-trust.crt", pki.ca, ca2)
    ctx = rawhttp.tls_context(trust, pki.client(ns, "app"))
    path = "/v1/secrets/db/p"

    status, body, _, session, reused = get(broker.port, ctx, path)
    assert (status, body, reused) == (200, value.encode(), False)
    status, _, _, session, reused = get(broker.port, ctx, path, session=session)
    assert (status, reused) == (200, True), "resumption does not work to begin with"

    # The old CA is no longer trusted: a session it vouched for must not
    # come back, even though its ticket is still within its lifetime.
    vol.update(server_files([ca2.cert], issue_server(ca2, "broker-server-ca2")))
    assert eventually(
        lambda: broker.metric("secrets_broker_tls_reloads_total", result="ok") == 1, PICKUP)
    try:
        status, _, _, _, reused = get(broker.port, ctx, path, session=session)
        resumed = reused or status == 200
    except (ssl.SSLError, ConnectionError, EOFError):
        resumed = False
    assert not resumed, "a session from before the CA change was resumed"

    # Also when the CA stays trusted: every reload starts new session keys.
    client2 = ca2.issue(f"{ns}-app", uris=[spiffe_id(ns, "app", pki.trust_domain)])
    ctx2 = rawhttp.tls_context(trust, client2)
    status, _, _, session2, _ = get(broker.port, ctx2, path)
    assert status == 200
    vol.update(server_files([ca2.cert, pki.ca.cert], issue_server(ca2, "broker-server-ca2b")))
    assert eventually(
        lambda: broker.metric("secrets_broker_tls_reloads_total", result="ok") == 2, PICKUP)
    status, _, _, _, reused = get(broker.port, ctx2, path, session=session2)
    assert (status, reused) == (200, False)
