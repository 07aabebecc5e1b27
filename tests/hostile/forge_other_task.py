# expect: protocol_violation
"""Claims results for tasks before they finish, and for tasks that do not exist."""
from metaforge import _rpc


def forward(task):
    for tid in ("t0", "t1", "no-such-task"):
        _rpc.send({"type": "result", "task_id": tid, "output": "Answer: 42"})
    return "Answer: 42"
