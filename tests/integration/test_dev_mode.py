"""`make run` (secrets-broker --dev) on a fresh directory prints a curl
command that returns a secret as printed (issue 3)."""
import os
import re
import shlex
import subprocess
import time

from harness.net import free_port


def test_dev_mode_prints_a_working_curl(tmp_path, broker_binary, run):
    port, ops = free_port(), free_port()
    env = {"PATH": "/usr/bin:/bin", "SB_DEV_DIR": str(tmp_path / "dev-run"),
           "SERVER_PORT": str(port), "OPS_PORT": str(ops)}
    for name in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([str(broker_binary), "--dev"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        command = None
        while time.monotonic() < deadline and command is None:
            text = stderr.read_text(errors="replace")
            m = re.search(r"^  (curl .*?)\\\n\s+(https://\S+)$", text, re.M)
            if m:
                command = m.group(1) + m.group(2)
            assert proc.poll() is None, text
            time.sleep(0.1)
        assert command, stderr.read_text()

        out = subprocess.run(shlex.split(command) + ["-sS", "-w", "\n%{http_code}"],
                             capture_output=True, text=True, timeout=20)
        body, _, code = out.stdout.rpartition("\n")
        assert code == "200", (out.stdout, out.stderr)
        assert '"name":"db"' in body and '"password"' in body

        # A second start reuses the PKI and secrets it made.
        files = sorted(p.name for p in (tmp_path / "dev-run" / "pki").iterdir())
        assert {"ca.crt", "client.crt", "client.key", "server.crt", "server.key"} <= set(files)
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
