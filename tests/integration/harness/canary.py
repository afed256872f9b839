"""Canary secret values: unique, recognisable strings used as secret
content, recorded so that a check at the end of the session can search
every log, audit record and metric the run produced for any of them (a hit
means a secret value leaked into an output)."""
import base64
import os
import secrets
import threading
from pathlib import Path

PREFIX = "sbcanary"


class CanaryRegistry:
    def __init__(self):
        self._lock = threading.Lock()
        self.values = []

    def make(self, label="v"):
        """A new canary string, e.g. sbcanary-db-password-3f9a...; label is
        for the reader of a failure report only."""
        value = f"{PREFIX}-{label}-{secrets.token_hex(12)}"
        with self._lock:
            self.values.append(value)
        return value

    def make_bytes(self, label="bin", size=48):
        """Binary secret content (not UTF-8) that starts with a canary, so
        its raw and base64 forms can both be searched for."""
        head = self.make(label).encode()
        return head + b"\xff\xfe\x00" + os.urandom(size)

    def forms(self, value):
        """What to search for: the string, its hex and the part of its base64
        that does not depend on what follows it."""
        raw = value.encode()
        whole = len(raw) - len(raw) % 3
        return [raw, raw.hex().encode(), base64.b64encode(raw[:whole])]

    def scan(self, paths):
        """Every (file, canary) where a file under `paths` contains a form of
        a canary."""
        with self._lock:
            values = list(self.values)
        needles = [(v, f) for v in values for f in self.forms(v)]
        hits = []
        for root in paths:
            for path in _files(Path(root)):
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if PREFIX.encode() not in data and not any(f in data for _, f in needles):
                    continue
                hits += [(str(path), v) for v, f in needles if f in data]
        return sorted(set(hits))


def _files(root):
    if root.is_file():
        yield root
    elif root.is_dir():
        yield from (p for p in root.rglob("*") if p.is_file())
