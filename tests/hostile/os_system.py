# expect: policy_denied
# what: shell command
"""os.system, the classic."""
import os


def forward(task):
    os.system("touch __ESCAPE__")
    return "done"
