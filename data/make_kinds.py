"""Generates data/kinds.jsonl: what kind of thing a word names ("What kind of thing is a
cello?" -> instrument), a proof domain whose answer is a label
(experiments/search-proof-kinds.toml), shipped as a user JSONL task file scored `label` with
the ten labels of `LABELS` as `domain.choices`.

Why this domain: the embedded 135M model knows what most of these words name, so the task is
within its reach, yet it does not reliably answer with one of ten fixed labels. Whether an
agent design turns what it knows into the right label is for the search to find.

Each task has `question` and `answer` (the label); the labels reach each task as its
`choices` from the experiment's `domain.choices`. The categories never overlap, so exactly
one label is right.

Deterministic: `python3 data/make_kinds.py > data/kinds.jsonl` reproduces the file.
"""
import json
import random

KINDS = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear",
              "plum", "strawberry", "pineapple", "watermelon", "apricot", "kiwi"],
    "animal": ["dog", "cat", "horse", "cow", "lion", "tiger", "elephant", "rabbit", "bear", "wolf",
               "monkey", "giraffe", "zebra", "sheep", "goat"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "airplane", "motorcycle", "boat", "ship",
                "tractor", "van", "taxi", "scooter", "helicopter", "subway"],
    "tool": ["hammer", "screwdriver", "saw", "wrench", "drill", "shovel", "pliers", "axe", "chisel",
             "rake", "ladder", "crowbar", "tape measure", "sandpaper", "file"],
    "color": ["red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white", "gray",
              "violet", "turquoise", "crimson", "beige", "navy"],
    "musical instrument": ["piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp",
                           "saxophone", "clarinet", "trombone", "banjo", "accordion", "harmonica", "tuba"],
    "piece of clothing": ["shirt", "jacket", "sweater", "skirt", "dress", "coat", "sock", "scarf",
                          "glove", "hat", "trousers", "jeans", "blouse", "vest", "raincoat"],
    "drink": ["water", "milk", "coffee", "tea", "juice", "lemonade", "cocoa", "soda", "smoothie",
              "milkshake", "cider", "espresso", "hot chocolate", "iced tea", "orange juice"],
    "sport": ["football", "tennis", "basketball", "baseball", "golf", "hockey", "swimming", "boxing",
              "cricket", "volleyball", "rugby", "skiing", "cycling", "badminton", "wrestling"],
    "job": ["teacher", "doctor", "nurse", "farmer", "pilot", "baker", "plumber", "lawyer", "dentist",
            "firefighter", "chef", "carpenter", "mechanic", "cashier", "librarian"],
}
# The label each category is answered with: one word.
LABELS = {
    "fruit": "fruit", "animal": "animal", "vehicle": "vehicle", "tool": "tool", "color": "color",
    "musical instrument": "instrument", "piece of clothing": "clothing", "drink": "drink",
    "sport": "sport", "job": "job",
}
TEMPLATES = [
    "What kind of thing is \"{word}\"?",
    "\"{word}\" is a kind of what?",
    "Which group does the word \"{word}\" belong to?",
    "What is \"{word}\"?",
]


def main():
    rng = random.Random(20261205)
    pool = [(kind, word, template) for kind in sorted(LABELS) for word in KINDS[kind]
            for template in TEMPLATES]
    rng.shuffle(pool)
    rows = []
    for kind, word, template in pool[:400]:
        rows.append({
            "id": f"kinds-{len(rows) + 1}",
            "question": template.format(word=word),
            "answer": LABELS[kind],
        })
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
