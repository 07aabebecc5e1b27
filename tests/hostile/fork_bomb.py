# expect: policy_denied
# what: fork
"""Fork bomb: every child forks again, forever."""
import os


def forward(task):
    while True:
        os.fork()
