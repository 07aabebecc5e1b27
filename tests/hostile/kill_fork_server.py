# expect: policy_denied
# what: signal
"""SIGKILLs its parent, which for a forked worker is the fork server, not the host."""
import os
import signal


def forward(task):
    os.kill(os.getppid(), signal.SIGKILL)
    return "killed"
