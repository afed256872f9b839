"""Child processes of the test session: start, wait until ready, stop by pid.

Every process is started in its own session (so its pid is also its process
group id) and recorded in a pid file under the run's work directory. A run
that dies without tearing down (SIGKILL, a crashed interpreter) leaves that
file behind; the next run reaps those processes before it starts anything,
so no port, file or process leaks from one run into the next.
"""
import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

RUNS_ROOT = Path(tempfile.gettempdir()) / "secrets-broker-it"


class StartupError(Exception):
    """A process exited or never became ready; the message has its log."""


def start_time(pid):
    """The process's start time in clock ticks since boot (proc(5) stat
    field 22): with the pid it names one process, even after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie: dead, only not yet waited for
    return int(fields[19])


def _same_process(pid, started):
    return started is not None and start_time(pid) == started


def tail(path, limit=6000):
    """The last `limit` characters of a log file, for failure messages."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return f"<no log at {path}>"
    text = data[-limit:].decode("utf-8", "replace")
    return ("...\n" if len(data) > limit else "") + text


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, name, argv, log_path, env=None, cwd=None, registry=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.registry = registry
        self.popen = None

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"# {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True)
        if self.registry:
            self.registry.add(self)
        return self

    def returncode(self):
        return self.popen.poll() if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, limit=6000):
        return tail(self.log_path, limit)

    def wait_ready(self, check, timeout, what="ready"):
        """Polls check() until it returns a true value; fails early, with the
        process's log, if the process exits first."""
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            if not self.alive():
                raise StartupError(
                    f"{self.name} exited with status {self.returncode()} before it was "
                    f"{what}; log {self.log_path}:\n{self.log_tail()}")
            try:
                result = check()
                if result:
                    return result
            except Exception as e:  # a refused connection while starting is normal
                last_error = e
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{self.name} was not {what} within {timeout}s (last error: {last_error}); "
                    f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit status.
        Stragglers left in the process group (same id) are killed too."""
        if self.popen is None:
            return None
        pid = self.popen.pid
        if self.popen.poll() is None:
            try:
                os.kill(pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.registry:
            self.registry.remove(self)
        return self.popen.returncode


class Registry:
    """The processes of one run, mirrored in <run_dir>/pids so that a later
    run can reap them if this one dies without tearing down."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.pidfile = self.run_dir / "pids"
        self.procs = []
        self.remove_dir_at_exit = False
        me = os.getpid()
        (self.run_dir / "owner").write_text(f"{me} {start_time(me)}\n")
        atexit.register(self._at_exit)

    def add(self, proc):
        self.procs.append(proc)
        self._write()

    def remove(self, proc):
        if proc in self.procs:
            self.procs.remove(proc)
            self._write()

    def _write(self):
        lines = "".join(f"{p.pid} {start_time(p.pid)} {p.name}\n"
                        for p in self.procs if p.pid)
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(lines)
        tmp.replace(self.pidfile)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            proc.stop(timeout=5)

    def _at_exit(self):
        # Reached also when pytest is interrupted before its teardowns.
        self.stop_all()
        if self.remove_dir_at_exit:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def reap_stale_runs(root=RUNS_ROOT):
    """Kills processes left by earlier runs whose pytest is gone, and removes
    their work directories. A pid is killed only when its start time still
    matches the recorded one, so a reused pid is never touched."""
    if not root.is_dir():
        return []
    reaped = []
    for run in root.iterdir():
        owner = _read_lines(run / "owner")
        if owner and _same_process(*_pid_and_start(owner[0])):
            continue
        for line in _read_lines(run / "pids"):
            pid, started = _pid_and_start(line)
            if not _same_process(pid, started):
                continue
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            reaped.append(line.strip())
        shutil.rmtree(run, ignore_errors=True)
    return reaped


def _pid_and_start(line):
    parts = line.split()
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, None


def _read_lines(path):
    try:
        return [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return []


def new_run_dir(root=RUNS_ROOT):
    root.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    os.chmod(run, 0o700)
    return run
