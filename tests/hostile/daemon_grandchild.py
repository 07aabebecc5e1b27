# expect: policy_denied
# what: subprocess
"""Starts a daemonised grandchild (new session) meant to outlive the worker."""
import subprocess


def forward(task):
    subprocess.Popen(["/bin/sh", "-c", "sleep 600 &"], start_new_session=True)
    return "spawned"
