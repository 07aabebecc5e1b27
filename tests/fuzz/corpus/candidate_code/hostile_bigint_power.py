# expect: timeout
# limits: deadline_s=3
"""A C-level loop: an enormous big-integer power."""


def forward(task):
    return str(len(str(7 ** (7 ** 9))))
