"""Generates data/arith.jsonl: short arithmetic word problems for the quickstart domain.

Why this domain: the embedded 135M model scores near zero on GSM8K, so no agent design can
show a difference there. On these one- and two-step problems it has real, partial signal,
and the agent design (direct answer vs. chain of thought vs. voting) changes the score;
README.md ("The quickstart domain") gives the measurement.

Deterministic: `python3 data/make_arith.py > data/arith.jsonl` reproduces the file.
"""
import json
import random

NAMES = ["Tom", "Mia", "Sara", "Ben", "Lena", "Omar", "Ivy", "Raj", "Zoe", "Max"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "cards"]

ONE_STEP = [
    ("{n} has {a} {x}. {n} gets {b} more {x}. How many {x} does {n} have now?", lambda a, b: a + b),
    ("{n} has {a} {x} and gives away {b} of them. How many {x} does {n} have left?", lambda a, b: a - b),
    ("There are {a} bags with {b} {x} in each bag. How many {x} are there in total?", lambda a, b: a * b),
    ("What is {a} plus {b}?", lambda a, b: a + b),
    ("What is {a} minus {b}?", lambda a, b: a - b),
    ("What is {a} times {b}?", lambda a, b: a * b),
]
TWO_STEP = [
    ("{n} has {a} {x}, buys {b} more and then gives {c} away. How many {x} does {n} have now?",
     lambda a, b, c: a + b - c),
    ("{n} buys {a} packs of {x} with {b} in each pack, then finds {c} more. How many {x} does {n} have?",
     lambda a, b, c: a * b + c),
]


def main():
    rng = random.Random(20261124)
    rows = []
    for i in range(400):
        n, x = rng.choice(NAMES), rng.choice(ITEMS)
        if rng.random() < 0.7:
            template, f = rng.choice(ONE_STEP)
            a, b = rng.randint(5, 30), rng.randint(2, 9)
            question, answer = template.format(n=n, x=x, a=a, b=b), f(a, b)
        else:
            template, f = rng.choice(TWO_STEP)
            a, b = rng.randint(3, 12), rng.randint(2, 9)
            c = rng.randint(1, min(a, 5))
            question, answer = template.format(n=n, x=x, a=a, b=b, c=c), f(a, b, c)
        rows.append({"id": f"arith-{i:03d}", "question": question, "answer": str(answer)})
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
