# expect: timeout
# limits: deadline_s=3
"""A Python-level infinite loop."""


def forward(task):
    while True:
        pass
