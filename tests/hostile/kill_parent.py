# expect: policy_denied
# what: signal
"""SIGKILLs the host."""
import os
import signal


def forward(task):
    os.kill(__HOST_PID__, signal.SIGKILL)
    return "killed"
