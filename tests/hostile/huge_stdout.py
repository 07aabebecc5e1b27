# expect: output_limit
"""Prints without end."""


def forward(task):
    while True:
        print("spam " * 10000)
