# expect: policy_denied
"""Reaches __import__ through the builtins of a function's globals."""


def forward(task):
    b = forward.__globals__["__builtins__"]
    imp = b["__import__"] if isinstance(b, dict) else b.__import__
    return str(imp("subprocess").run(["id"], capture_output=True))
