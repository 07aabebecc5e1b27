# expect: timeout
# limits: deadline_s=3
"""Ignores SIGTERM and SIGINT (at import, in the main thread), then loops: only SIGKILL of
the process group ends it."""
import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)


def forward(task):
    while True:
        pass
