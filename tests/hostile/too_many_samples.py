# expect: policy_denied
# what: n =
"""Asks the host for a million samples in one call, going around the client-side check."""
from metaforge import _rpc


def forward(task):
    return str(_rpc.call_llm([{"role": "user", "content": "hi"}], temperature=None,
                             n=1000000, json=False, max_tokens=None))
