# expect: policy_denied
"""Reads a secret through a symlink planted in its own scratch folder."""
import os


def forward(task):
    os.symlink("__SECRET_FILE__", "link-" + task["question"])
    with open("link-" + task["question"]) as f:
        return f.read()
