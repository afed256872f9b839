"""Loopback ports and waiting for them."""
import socket
import threading

LOOPBACK = "127.0.0.1"

_given = set()
_lock = threading.Lock()


def free_port():
    """A loopback TCP port that is free now and not handed out before in this
    run (the kernel may offer a just-closed port twice)."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no free loopback port found")


def port_open(port, host=LOOPBACK):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
