# expect: protocol_violation
"""One protocol line larger than the host accepts."""
from metaforge import _rpc


def forward(task):
    _rpc.send({"type": "llm", "id": 1, "messages": [{"role": "user", "content": "x" * (8 << 20)}]})
    return "sent"
