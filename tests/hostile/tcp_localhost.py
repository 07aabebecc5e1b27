# expect: policy_denied
# what: network
"""TCP connection to a server the host really runs on 127.0.0.1."""
import socket


def forward(task):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", __PORT__))
    s.sendall(b"exfiltrated")
    return "connected"
