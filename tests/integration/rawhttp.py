"""A raw HTTP/1.1 client over mutual TLS for tests that must send exact
bytes (requests and urllib3 normalise paths and headers)."""
import socket
import ssl


def tls_context(ca_path, cert=None):
    ctx = ssl.create_default_context(cafile=str(ca_path))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(*[str(p) for p in cert.pair])
    return ctx


class RawConn:
    """One TLS connection; send() writes bytes, response() reads one
    HTTP/1.1 response (status, headers, body)."""

    def __init__(self, port, ctx, host="127.0.0.1", timeout=10, session=None):
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def response(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_peer(self):
        """True when the server has closed the connection."""
        try:
            self.sock.settimeout(2)
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def request(port, ctx, raw_request):
    """Sends one request on a new connection and returns (status, headers, body)."""
    conn = RawConn(port, ctx)
    try:
        conn.send(raw_request)
        return conn.response(head_only=raw_request.startswith(b"HEAD "))
    finally:
        conn.close()
