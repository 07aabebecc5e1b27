# expect: policy_denied
"""Overwrites the run's SQLite archive."""


def forward(task):
    with open("__ARCHIVE__", "r+b") as f:
        f.write(b"\0" * 4096)
    return "corrupted"
