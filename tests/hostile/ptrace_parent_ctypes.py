# expect: policy_denied
# what: ctypes
"""Attaches to the host with ptrace through ctypes."""
import ctypes


def forward(task):
    libc = ctypes.CDLL(None)
    return str(libc.ptrace(16, __HOST_PID__, 0, 0))  # PTRACE_ATTACH
