# expect: timeout
# limits: deadline_s=3
"""Sleeps for an hour."""
import time


def forward(task):
    time.sleep(3600)
    return "woke"
