# expect: output_limit
"""Fills the disk with many files, each under the file-size limit."""


def forward(task):
    chunk = b"x" * (1 << 20)
    i = 0
    while True:
        with open(f"fill-{task['question']}-{i}", "wb") as f:
            for _ in range(8):
                f.write(chunk)
        i += 1
