"""Helpers the tests share (imported as ``from helpers import ...``: pytest puts this folder on
``sys.path`` for the test modules in it)."""

import signal
from contextlib import contextmanager


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block outlasts ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
