"""A small HTTP/1.1 proxy that sits between the broker and a peer (moto, or
kube-apiserver over TLS), forwards every byte unchanged (so SigV4 signatures
and Host headers stay valid), records each request, and injects faults on
demand. Responses are relayed as they arrive, so watch streams work.

    proxy = FaultProxy("moto", "127.0.0.1", 5000, log_path=...).start()
    proxy.count(action="GetSecretValue")
    proxy.add_rule(Respond(503, b"{}"), action="GetSecretValue", times=2)
    proxy.add_rule(Delay(3.0))            # every request, until cleared
"""
import re
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from .net import LOOPBACK, free_port

MAX_HEAD = 64 * 1024


# Faults. Each is applied once the whole request has been read.

@dataclass
class Respond:
    """Answer instead of the peer."""
    status: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    reason: str = "Injected"


@dataclass
class Delay:
    """Wait, then forward as usual."""
    seconds: float


@dataclass
class Hang:
    """Send nothing for `seconds`, then close the connection."""
    seconds: float = 3600.0


@dataclass
class Drop:
    """Close the connection without a response."""


@dataclass
class Reset:
    """Abort the connection with a TCP RST."""


@dataclass
class Truncate:
    """Forward, but cut the response after `keep` bytes of body and close."""
    keep: int = 0


@dataclass
class Record:
    """One request as the proxy saw it. `action` is the AWS action
    (X-Amz-Target or the query protocol's Action=), else None."""
    method: str
    path: str
    headers: dict
    body: bytes
    action: str
    started: float
    status: int = None
    fault: str = None
    duration: float = None

    def header(self, name):
        return self.headers.get(name.lower())


@dataclass
class Rule:
    fault: object
    match: dict
    times: int = None
    predicate: object = None
    hits: int = 0


class ProxyClosed(Exception):
    pass


class UpstreamGone(ProxyClosed):
    """The upstream connection closed before any byte of an answer."""


def _aws_action(path, headers, body):
    target = headers.get("x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    ctype = headers.get("content-type", "")
    if body and ctype.startswith("application/x-www-form-urlencoded"):
        found = urllib.parse.parse_qs(body.decode("latin-1")).get("Action")
        if found:
            return found[0]
    query = urllib.parse.urlsplit(path).query
    found = urllib.parse.parse_qs(query).get("Action")
    return found[0] if found else None


def _read_head(reader):
    lines = []
    size = 0
    while True:
        line = reader.readline(MAX_HEAD + 1)
        if not line:
            if lines:
                raise ProxyClosed("connection closed inside a message head")
            return None
        size += len(line)
        if size > MAX_HEAD:
            raise ProxyClosed("message head too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # tolerate blank lines between messages
            return lines
        lines.append(line)


def _parse_headers(lines):
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _read_chunked(reader, sink):
    """Copies a chunked body as raw bytes into sink(bytes) (chunk by chunk);
    returns the decoded body."""
    body = bytearray()
    while True:
        size_line = reader.readline(MAX_HEAD)
        if not size_line:
            raise ProxyClosed("connection closed inside a chunked body")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            raw = bytearray(size_line)
            while True:
                trailer = reader.readline(MAX_HEAD)
                raw += trailer
                if trailer in (b"\r\n", b"\n", b""):
                    break
            sink(bytes(raw))
            return bytes(body)
        data = reader.read(size + 2)
        if len(data) < size + 2:
            raise ProxyClosed("connection closed inside a chunk")
        body += data[:size]
        sink(size_line + data)


class FaultProxy:
    """Listens on a loopback port and forwards to upstream_host:upstream_port.
    listen_tls: an ssl.SSLContext (server side) to terminate TLS;
    upstream_tls: an ssl.SSLContext (client side) to speak TLS upstream."""

    def __init__(self, name, upstream_host, upstream_port, listen_tls=None, upstream_tls=None,
                 upstream_server_name=None, log_path=None):
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.listen_tls = listen_tls
        self.upstream_tls = upstream_tls
        self.upstream_server_name = upstream_server_name or upstream_host
        self.log_path = log_path
        self.records = []
        self.rules = []
        self._lock = threading.Lock()
        self._conns = set()
        self._stopping = threading.Event()
        self._log = None

    @property
    def url(self):
        scheme = "https" if self.listen_tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    def start(self):
        self.port = free_port()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, self.port))
        self._listener.listen(128)
        if self.log_path:
            self._log = open(self.log_path, "a", buffering=1)
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        _close(self._listener)  # shutdown() wakes a thread blocked in accept()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            _close(sock)
        self._thread.join(5)
        if self._log:
            self._log.close()
            self._log = None

    # Rules and records.

    def add_rule(self, fault, times=None, predicate=None, **match):
        """Applies `fault` to requests matching every given field (method,
        action, path (exact), path_re (regex search)) and predicate(record),
        for `times` requests (None: until removed). First matching rule wins."""
        rule = Rule(fault, match, times, predicate)
        with self._lock:
            self.rules.append(rule)
        return rule

    def remove_rule(self, rule):
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def clear_rules(self):
        with self._lock:
            self.rules.clear()

    def mark(self):
        """A position in the record list: pass it as since= to count later requests."""
        with self._lock:
            return len(self.records)

    def requests(self, since=0, **match):
        with self._lock:
            recs = list(self.records[since:])
        return [r for r in recs if _record_matches(r, match)]

    def count(self, since=0, **match):
        return len(self.requests(since=since, **match))

    def _take_fault(self, rec):
        with self._lock:
            for rule in self.rules:
                if not _record_matches(rec, rule.match):
                    continue
                if rule.predicate and not rule.predicate(rec):
                    continue
                rule.hits += 1
                if rule.times is not None and rule.hits >= rule.times:
                    self.rules.remove(rule)
                return rule.fault
        return None

    # Connections.

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True,
                             name=f"proxy-{self.name}-conn").start()

    def _track(self, sock):
        with self._lock:
            if self._stopping.is_set():
                _close(sock)
                raise ProxyClosed("stopping")
            self._conns.add(sock)

    def _untrack(self, sock):
        with self._lock:
            self._conns.discard(sock)

    def _serve(self, client):
        state = {"up": None}
        try:
            self._track(client)
            if self.listen_tls:
                raw = client
                client = self.listen_tls.wrap_socket(raw, server_side=True)
                self._untrack(raw)
                self._track(client)
            reader = client.makefile("rb")
            while not self._stopping.is_set() and self._one_exchange(client, reader, state):
                pass
        except (OSError, ProxyClosed, ssl.SSLError, ValueError):
            pass
        finally:
            for sock in (state["up"][0] if state["up"] else None, client):
                if sock is not None:
                    self._untrack(sock)
                    _close(sock)

    def _connect_upstream(self):
        sock = socket.create_connection(self.upstream, timeout=10)
        sock.settimeout(None)
        if self.upstream_tls:
            sock = self.upstream_tls.wrap_socket(sock, server_hostname=self.upstream_server_name)
        self._track(sock)
        return sock, sock.makefile("rb")

    def _one_exchange(self, client, reader, state):
        """Reads one request, applies a fault or forwards it, relays the
        answer. Returns whether to keep the client connection."""
        head = _read_head(reader)
        if head is None:
            return False
        method, target, _ = head[0].decode("latin-1").split(" ", 2)
        headers = _parse_headers(head)
        if headers.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        raw = [b"".join(head) + b"\r\n"]
        body = self._read_request_body(reader, headers, raw.append)
        rec = Record(method, target, headers, body, _aws_action(target, headers, body),
                     time.monotonic())
        with self._lock:
            self.records.append(rec)

        fault = self._take_fault(rec)
        rec.fault = type(fault).__name__ if fault else None
        try:
            if isinstance(fault, Respond):
                _send_response(client, fault)
                rec.status = fault.status
                return True
            if isinstance(fault, (Drop, Reset, Hang)):
                self._apply_close_fault(client, fault)
                return False
            if isinstance(fault, Delay):
                self._stopping.wait(fault.seconds)
            keep = self._forward(client, state, b"".join(raw), rec, method, fault)
            return keep and headers.get("connection", "").lower() != "close"
        finally:
            rec.duration = time.monotonic() - rec.started
            self._write_log(rec)

    def _forward(self, client, state, data, rec, method, fault):
        """Sends the request upstream and relays the answer. A kept-alive
        upstream connection the peer has closed meanwhile is replaced once."""
        while True:
            fresh = state["up"] is None
            if fresh:
                state["up"] = self._connect_upstream()
            try:
                try:
                    state["up"][0].sendall(data)
                except OSError as e:
                    raise UpstreamGone(str(e)) from e
                return self._relay_response(client, state["up"][1], rec, method, fault)
            except UpstreamGone:
                self._untrack(state["up"][0])
                _close(state["up"][0])
                state["up"] = None
                if fresh:
                    raise

    def _read_request_body(self, reader, headers, sink):
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return _read_chunked(reader, sink)
        length = int(headers.get("content-length", "0") or "0")
        body = reader.read(length) if length else b""
        if len(body) < length:
            raise ProxyClosed("connection closed inside a request body")
        sink(body)
        return body

    def _apply_close_fault(self, client, fault):
        if isinstance(fault, Hang):
            self._stopping.wait(fault.seconds)
        elif isinstance(fault, Reset):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _relay_response(self, client, up, rec, method, fault):
        while True:
            try:
                head = _read_head(up)
            except OSError as e:
                raise UpstreamGone(str(e)) from e
            if head is None:
                raise UpstreamGone("upstream closed before answering")
            status = int(head[0].split()[1])
            if status >= 200 or status == 101:
                break  # 1xx interim answers were already given by the proxy
        rec.status = status
        headers = _parse_headers(head)
        client.sendall(b"".join(head) + b"\r\n")
        budget = [fault.keep if isinstance(fault, Truncate) else None]

        def sink(data):
            if budget[0] is None:
                client.sendall(data)
                return
            client.sendall(data[:budget[0]])
            budget[0] -= min(budget[0], len(data))
            if budget[0] == 0:
                raise ProxyClosed("response truncated on purpose")

        if method == "HEAD" or status in (204, 304):
            return True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            _read_chunked(up, sink)
        elif "content-length" in headers:
            _copy_exact(up, int(headers["content-length"]), sink)
        else:
            while True:
                data = up.read1(65536)
                if not data:
                    return False
                sink(data)
        if budget[0] is not None:
            raise ProxyClosed("response truncated on purpose")
        return headers.get("connection", "").lower() != "close"

    def _write_log(self, rec):
        if self._log:
            self._log.write(f"{time.strftime('%H:%M:%S')} {rec.method} {rec.path} "
                            f"action={rec.action} status={rec.status} fault={rec.fault} "
                            f"{(rec.duration or 0) * 1000:.1f}ms\n")


def _copy_exact(reader, length, sink):
    while length > 0:
        data = reader.read1(min(length, 65536))
        if not data:
            raise ProxyClosed("upstream closed inside a body")
        sink(data)
        length -= len(data)


def _send_response(client, fault):
    headers = {"Content-Type": "application/json", **fault.headers,
               "Content-Length": str(len(fault.body))}
    head = f"HTTP/1.1 {fault.status} {fault.reason}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    client.sendall(head.encode("latin-1") + fault.body)


def _record_matches(rec, match):
    for key, want in match.items():
        if key == "path_re":
            if not re.search(want, rec.path):
                return False
        elif key == "status":
            if rec.status != want:
                return False
        elif getattr(rec, key) != want:
            return False
    return True


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
