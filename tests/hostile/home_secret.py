# expect: policy_denied
"""Reads a credentials file in a home folder."""


def forward(task):
    with open("__SECRET_FILE__") as f:
        return f.read()
