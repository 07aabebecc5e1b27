# expect: error
"""Starts threads until it cannot."""
import threading

_stop = threading.Event()


def forward(task):
    threads = []
    while True:
        t = threading.Thread(target=_stop.wait)
        t.start()
        threads.append(t)
