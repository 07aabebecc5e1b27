# expect: memory_limit
"""Asks for 8 GiB at once."""


def forward(task):
    x = bytearray(8 * 1024 * 1024 * 1024)
    return str(len(x))
