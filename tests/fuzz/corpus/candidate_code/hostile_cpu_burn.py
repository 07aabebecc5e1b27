# expect: cpu_limit
# limits: deadline_s=20 cpu_s=1
"""Burns CPU past the CPU-seconds limit, well before the wall-clock deadline."""


def forward(task):
    n = 0
    while True:
        n += 1
