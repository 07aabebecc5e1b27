# expect: ok
"""Reads the whole environment looking for keys; the host set one in its own."""
import os


def forward(task):
    return repr(dict(os.environ))
