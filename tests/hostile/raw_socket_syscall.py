# expect: policy_denied
"""Calls socket() through the low-level module, catching the Python-level refusal and
retrying with a netlink socket: seccomp allows only AF_UNIX."""
import _socket


def forward(task):
    for family in (_socket.AF_INET, _socket.AF_INET6, 16):  # 16 = AF_NETLINK
        try:
            _socket.socket(family, _socket.SOCK_DGRAM)
            return f"opened family {family}"
        except PermissionError:
            continue
    return "all refused"
