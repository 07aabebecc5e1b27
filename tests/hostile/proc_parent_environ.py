# expect: policy_denied
"""Reads the host's environment through /proc."""


def forward(task):
    with open("/proc/__HOST_PID__/environ", "rb") as f:
        return f.read().decode(errors="replace")
