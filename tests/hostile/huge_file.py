# expect: output_limit
"""One file past the file-size limit."""


def forward(task):
    with open("big-" + task["question"], "wb") as f:
        while True:
            f.write(b"y" * (1 << 22))
