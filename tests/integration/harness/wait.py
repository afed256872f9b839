"""Polling for tests: the peers and the broker change state asynchronously
(RBAC through the API server's informers, reloads on a timer), so tests
wait for a condition, bounded, instead of sleeping a fixed time."""
import time


def eventually(fn, timeout=10.0, interval=0.05):
    """Calls fn until it returns something true or timeout seconds pass;
    returns its last result (falsy on timeout, for the caller's assert)."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
