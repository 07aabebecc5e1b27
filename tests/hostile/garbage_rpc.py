# expect: protocol_violation
"""Writes garbage lines into the protocol pipe."""
import os


def forward(task):
    for _ in range(100):
        os.write(4, b"\x00\xffnot json at all\n")
    return "Answer: 42"
