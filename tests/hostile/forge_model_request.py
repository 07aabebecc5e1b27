# expect: policy_denied
# what: model
"""Asks the host's gateway for a (more expensive) model the experiment does not hold."""
from metaforge import _rpc


def forward(task):
    _rpc.send({"type": "llm", "id": 999, "task_id": "t0", "model": "gpt-4-turbo",
               "messages": [{"role": "user", "content": "hi"}], "n": 1})
    return "asked"
