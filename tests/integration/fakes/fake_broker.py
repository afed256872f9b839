#!/usr/bin/python3
"""A stand-in for the broker, used only by test_harness.py to check the
harness itself (start, readiness, mTLS client, kubeconfig and in-cluster
files, stop). Standard library only. Not a model of the product.

GET /v1/whoami      -> {"uris": [...]} of the client certificate
GET /v1/kube-whoami -> the user name a SelfSubjectReview returns for the
                       credentials the harness gave (KUBECONFIG or in-cluster)
FAKE_BROKER_MODE=exit-early: print a line on stderr and exit 3 at once.
"""
import http.server
import json
import os
import signal
import ssl
import sys
import threading
import urllib.request

env = os.environ


def kube_target():
    if env.get("KUBECONFIG"):
        cfg = json.load(open(env["KUBECONFIG"]))
        return (cfg["clusters"][0]["cluster"]["server"],
                cfg["clusters"][0]["cluster"]["certificate-authority"],
                cfg["users"][0]["user"]["token"])
    sa = env["K8S_SERVICEACCOUNT_DIR"]
    server = f"https://{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}"
    return server, f"{sa}/ca.crt", open(f"{sa}/token").read().strip()


def kube_whoami():
    server, ca, token = kube_target()
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1",
                       "kind": "SelfSubjectReview"}).encode()
    req = urllib.request.Request(server + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                 data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)["status"]["userInfo"]["username"]


def audit(record):
    with open(env["AUDIT_LOG_PATH"], "a") as f:
        f.write(json.dumps(record) + "\n")


class Api(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write(json.dumps({"msg": fmt % args}) + "\n")

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/readyz" or self.path == "/healthz":
            return self.reply(200, {"status": "ok"})
        if self.path == "/v1/whoami":
            cert = self.connection.getpeercert()
            uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
            audit({"path": self.path, "uris": uris})
            return self.reply(200, {"uris": uris})
        if self.path == "/v1/kube-whoami":
            return self.reply(200, {"username": kube_whoami()})
        return self.reply(404, {"error": {"code": "not_found"}})


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main():
    if env.get("FAKE_BROKER_MODE") == "exit-early":
        sys.stderr.write("fake-broker: SERVER_PORT: refusing to start on purpose\n")
        return 3
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(env["MTLS_CA_CERT_PATH"])
    ctx.load_cert_chain(env["MTLS_SERVER_CERT_PATH"], env["MTLS_SERVER_KEY_PATH"])
    api = http.server.ThreadingHTTPServer((env["BIND_ADDRESS"], int(env["SERVER_PORT"])), Api)
    api.socket = ctx.wrap_socket(api.socket, server_side=True)
    ops = http.server.ThreadingHTTPServer((env["OPS_BIND_ADDRESS"], int(env["OPS_PORT"])), Api)
    serve(api)
    serve(ops)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
