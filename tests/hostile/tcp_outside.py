# expect: policy_denied
# what: network
"""TCP connection to an outside address."""
import socket


def forward(task):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("1.1.1.1", 443))
    return "connected"
