# expect: crashed
"""Closes the worker's protocol pipes from under it."""
import os


def forward(task):
    os.close(3)
    os.close(4)
    return "closed"
