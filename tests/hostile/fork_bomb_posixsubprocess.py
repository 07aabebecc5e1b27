# expect: policy_denied
"""Fork through the C helper behind subprocess, which raises no audit event: the seccomp
filter (clone without CLONE_THREAD) is what stops it."""
import _posixsubprocess
import os


def forward(task):
    r, w = os.pipe()
    for _ in range(1000):
        _posixsubprocess.fork_exec(
            [b"/bin/sh"], [b"/bin/sh"], True, (), None, None,
            -1, -1, -1, -1, -1, -1, r, w,
            True, True, -1, None, None, None, -1, None, True)
    return "forked"
