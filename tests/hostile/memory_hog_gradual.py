# expect: memory_limit
"""Grows a list of 16 MiB blocks until something gives."""


def forward(task):
    blocks = []
    while True:
        blocks.append(bytearray(16 * 1024 * 1024))
