# expect: policy_denied
# what: /etc/
"""Reads /etc/shadow (or passwd where there is no shadow)."""
import os


def forward(task):
    path = "/etc/shadow" if os.path.exists("/etc/shadow") else "/etc/passwd"
    with open(path) as f:
        return f.read()
