# expect: timeout
# limits: deadline_s=3
"""A C-level loop: catastrophic regex backtracking never returns to the interpreter."""
import re


def forward(task):
    return str(re.match(r"(a+)+$", "a" * 64 + "b"))
