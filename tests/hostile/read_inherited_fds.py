# expect: ok
"""Reads every file descriptor it might have inherited, looking for the archive."""
import os


def forward(task):
    found = []
    for fd in range(5, 256):
        try:
            found.append(os.read(fd, 64))
        except OSError:
            pass
    return repr(found)
