"""Generates data/units.jsonl: unit conversions and counting questions, a second domain for
the search-quality proof (experiments/search-proof-units.toml), shipped as a user JSONL task
file scored `numeric`, the way a user brings a task of their own.

Why this domain: it asks for what arith does not, a fact the question leaves unsaid (60
minutes in an hour, 8 legs on a spider, 100 cents in a dollar), combined with the numbers
given, and the embedded 135M model has partial signal on it. Which agent design helps here
is for the search to find.

Deterministic: `python3 data/make_units.py > data/units.jsonl` reproduces the file.
"""
import json
import random

# (question template, factor): the answer is a * factor, or a * factor + b with a second part.
CONVERSIONS = [
    ("How many minutes are in {a} hours?", 60, "minutes"),
    ("How many seconds are in {a} minutes?", 60, "seconds"),
    ("How many hours are in {a} days?", 24, "hours"),
    ("How many days are in {a} weeks?", 7, "days"),
    ("How many months are in {a} years?", 12, "months"),
    ("How many centimeters are in {a} meters?", 100, "centimeters"),
    ("How many grams are in {a} kilograms?", 1000, "grams"),
    ("How many cents are in {a} dollars?", 100, "cents"),
    ("How many eggs are in {a} dozen?", 12, "eggs"),
]
WITH_REST = [
    ("How many minutes are in {a} hours and {b} minutes?", 60),
    ("How many days are in {a} weeks and {b} days?", 7),
    ("How many months are in {a} years and {b} months?", 12),
    ("How many centimeters are in {a} meters and {b} centimeters?", 100),
    ("How many cents are in {a} dollars and {b} cents?", 100),
]
COUNTS = [
    ("How many legs do {a} spiders have?", 8),
    ("How many legs do {a} dogs have?", 4),
    ("How many wheels do {a} bicycles have?", 2),
    ("How many wheels do {a} cars have?", 4),
    ("How many wheels do {a} tricycles have?", 3),
    ("How many sides do {a} triangles have in total?", 3),
    ("How many sides do {a} squares have in total?", 4),
    ("How many legs do {a} chickens have?", 2),
]


def main():
    rng = random.Random(20261202)
    rows = []
    for i in range(400):
        r = rng.random()
        if r < 0.4:
            template, factor, _ = rng.choice(CONVERSIONS)
            a = rng.randint(2, 9)
            question, answer = template.format(a=a), a * factor
        elif r < 0.65:
            template, factor = rng.choice(WITH_REST)
            a, b = rng.randint(2, 6), rng.randint(1, factor - 1 if factor < 20 else 59)
            question, answer = template.format(a=a, b=b), a * factor + b
        else:
            template, factor = rng.choice(COUNTS)
            a = rng.randint(3, 15)
            question, answer = template.format(a=a), a * factor
        rows.append({"id": f"units-{i:03d}", "question": question, "answer": str(answer)})
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
