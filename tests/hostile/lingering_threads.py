# expect: ok
"""Leaves non-daemon threads running after the result, writing files forever."""
import threading
import time


def _spin(name):
    i = 0
    while True:
        with open(f"linger-{name}-{i % 4}", "w") as f:
            f.write("still here")
        i += 1
        time.sleep(0.01)


def forward(task):
    threading.Thread(target=_spin, args=(task["question"],)).start()
    return "Answer: 42"
