# expect: policy_denied
"""UDP datagram to a socket the host really listens on at 127.0.0.1."""
import socket


def forward(task):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"exfiltrated", ("127.0.0.1", __UDP_PORT__))
    return "sent"
