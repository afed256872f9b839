"""Keeps everything the broker shows the outside world in the run's logs, so
that the session-end canary scan (conftest's `canaries` fixture searches
every file under the log directory) covers it, and checks that secrets the
tests create carry canaries.

Saved next to each broker's stderr.log and audit.log:
- ops-responses.log: every /metrics, /readyz and /healthz answer a test
  read through Broker.ops_get or Broker.readyz (so every scrape);
- metrics-at-stop.txt: one last /metrics scrape just before the broker is
  stopped, whether or not a test looked at its metrics;
- error-bodies.log: every non-2xx answer a test received from the API port
  (through BrokerClient or rawhttp), and the error objects of batch items;
- audit-elsewhere.log: a copy of the audit log when AUDIT_LOG_PATH points
  outside the broker's log directory (a tmpfs, a symlink to /dev/full).

Secrets created through the harness (KubeClient.create_secret and
replace_secret, AwsPeer.create_secret and put_secret_value) whose values
carry no canary are listed in the terminal summary; SB_IT_STRICT_CANARIES=1
makes the test that created one fail. Brokers started above debug level
(the default, LOG_LEVEL=debug, logs the most) are listed too.

Registered with `-p plugins.outputs` in pytest.ini. It wraps methods of the
harness classes instead of changing them; nothing here starts a process.
"""
import json
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import rawhttp
from harness import aws as harness_aws
from harness import broker as harness_broker
from harness import kube as harness_kube
from harness.canary import PREFIX

_lock = threading.Lock()
_dirs = {}           # API port -> the broker's log directory
_uncanaried = []     # (test node id, where, secret)
_quiet = []          # (test node id, level) of brokers started above debug
_current = {"test": None}


def _append(path, text):
    with _lock:
        with open(path, "ab") as f:
            f.write(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))


def _dir_for_port(port):
    with _lock:
        return _dirs.get(int(port)) if port else None


def _is_success(status):
    return isinstance(status, int) and 200 <= status < 300


def _record_body(port, how, status, body):
    where = _dir_for_port(port)
    if where is None or not body:
        return
    _append(where / "error-bodies.log", f"# {how} -> {status}\n".encode() + body + b"\n")


def _record_batch_errors(port, how, body):
    """Error objects inside a 200 batch answer are error bodies too."""
    try:
        results = json.loads(body).get("results") or []
    except (ValueError, AttributeError):
        return
    errors = [item for item in results if isinstance(item, dict) and "error" in item]
    if errors:
        _record_body(port, how + " (batch item errors)", 200,
                     json.dumps(errors).encode())


# Broker: ops answers and the last scrape.

_orig_init = harness_broker.Broker.__init__
_orig_ops_get = harness_broker.Broker.ops_get
_orig_readyz = harness_broker.Broker.readyz
_orig_stop = harness_broker.Broker.stop


def _broker_init(self, *args, **kw):
    _orig_init(self, *args, **kw)
    with _lock:
        _dirs[self.port] = self.log_dir
    level = self.env.get("LOG_LEVEL", "info")
    if level != "debug" and self.env.get("DEBUG_MODE") != "true":
        _quiet.append((_current["test"], level))


def _broker_ops_get(self, path):
    reply = _orig_ops_get(self, path)
    _append(self.log_dir / "ops-responses.log",
            f"# GET {path} -> {reply.status}\n".encode() + reply.body + b"\n")
    return reply


def _broker_readyz(self):
    response = _orig_readyz(self)
    if response.status_code != 200:
        _append(self.log_dir / "ops-responses.log",
                f"# GET /readyz -> {response.status_code}\n".encode() + response.content + b"\n")
    return response


def _save_last_scrape(broker):
    if broker.proc is None or not broker.proc.alive():
        return
    try:
        r = broker.ops.get(broker.ops_url + "/metrics", timeout=3)
        (broker.log_dir / "metrics-at-stop.txt").write_bytes(r.content)
    except Exception as e:  # a broker that hangs or died: its logs say why
        (broker.log_dir / "metrics-at-stop.txt").write_text(f"# no scrape: {e}\n")


def _copy_outside_audit_log(broker):
    path = Path(broker.audit_path)
    try:
        if path.resolve().parent == broker.log_dir.resolve() or not path.is_file():
            return
        (broker.log_dir / "audit-elsewhere.log").write_bytes(path.read_bytes())
    except OSError:
        pass


def _broker_stop(self, timeout=10):
    _save_last_scrape(self)
    status = _orig_stop(self, timeout)
    _copy_outside_audit_log(self)
    return status


# The API port: error bodies.

_orig_client_request = harness_broker.BrokerClient.request
_orig_raw_init = rawhttp.RawConn.__init__
_orig_raw_response = rawhttp.RawConn.response


def _client_request(self, method, path, **kw):
    reply = _orig_client_request(self, method, path, **kw)
    port = urlsplit(self.base_url).port
    how = f"{method} {path}"
    if not _is_success(reply.status):
        _record_body(port, how, reply.status, reply.body)
    elif path.rstrip("/").endswith("/batch"):
        _record_batch_errors(port, how, reply.body)
    return reply


def _raw_init(self, port, *args, **kw):
    self._sb_port = port
    _orig_raw_init(self, port, *args, **kw)


def _raw_response(self, *args, **kw):
    status, headers, body = _orig_raw_response(self, *args, **kw)
    port = getattr(self, "_sb_port", None)
    if not _is_success(status):
        _record_body(port, "raw request", status, body)
    else:
        _record_batch_errors(port, "raw request", body)
    return status, headers, body


# Secrets the tests create: every value should carry a canary.

def _values(data=None, string_data=None, string=None, binary=None):
    out = []
    for mapping in (data, string_data):
        out += list((mapping or {}).values())
    out += [v for v in (string, binary) if v is not None]
    return out


def _has_canary(value):
    mark = PREFIX.encode() if isinstance(value, bytes) else PREFIX
    return mark in value


def _check_canaries(where, name, values):
    if all(_has_canary(v) for v in values):
        return
    _uncanaried.append((_current["test"], where, name))
    if os.environ.get("SB_IT_STRICT_CANARIES") == "1":
        raise AssertionError(f"{where} {name}: a secret value without a canary "
                             "(use the canaries fixture)")


def _wrap_kube(method_name):
    orig = getattr(harness_kube.KubeClient, method_name)

    def wrapper(self, ns, name, data=None, string_data=None, *args, **kw):
        _check_canaries(f"kube {method_name}", f"{ns}/{name}", _values(data, string_data))
        return orig(self, ns, name, data, string_data, *args, **kw)
    return wrapper


def _wrap_aws(method_name):
    orig = getattr(harness_aws.AwsPeer, method_name)

    def wrapper(self, secret_id, string=None, binary=None, *args, **kw):
        _check_canaries(f"aws {method_name}", secret_id, _values(string=string, binary=binary))
        return orig(self, secret_id, string, binary, *args, **kw)
    return wrapper


def install():
    harness_broker.Broker.__init__ = _broker_init
    harness_broker.Broker.ops_get = _broker_ops_get
    harness_broker.Broker.readyz = _broker_readyz
    harness_broker.Broker.stop = _broker_stop
    harness_broker.BrokerClient.request = _client_request
    rawhttp.RawConn.__init__ = _raw_init
    rawhttp.RawConn.response = _raw_response
    for name in ("create_secret", "replace_secret"):
        setattr(harness_kube.KubeClient, name, _wrap_kube(name))
    for name in ("create_secret", "put_secret_value"):
        setattr(harness_aws.AwsPeer, name, _wrap_aws(name))


install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current["test"] = item.nodeid
    try:
        return (yield)
    finally:
        _current["test"] = None


def pytest_terminal_summary(terminalreporter):
    if _uncanaried:
        terminalreporter.section("secrets created without a canary")
        for test, where, name in sorted(set(_uncanaried), key=lambda t: (t[0] or "", t[2])):
            terminalreporter.write_line(f"{test}: {where} {name}")
    if _quiet:
        # The canary scan is strongest at debug level, where the most is logged.
        terminalreporter.section("brokers started above debug level")
        for test, level in sorted(set(_quiet), key=lambda t: (t[0] or "", t[1])):
            terminalreporter.write_line(f"{test}: LOG_LEVEL={level}")
