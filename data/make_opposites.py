"""Generates data/opposites.jsonl: multiple-choice questions about word opposites ("What is
the opposite of "early"?", four options, one right), a proof domain whose answer is a letter
(experiments/search-proof-opposites.toml), shipped as a user JSONL task file scored `mc`.

Why this domain: the embedded 135M model knows many common opposites, so the task is within
its reach, yet asked for a letter it answers little better than chance. Whether an agent
design closes that gap is for the search to find.

Each task has `question`, `options` (four words) and `answer` (the letter). The wrong
options come from other pairs, never the word asked about or its opposite.

Deterministic: `python3 data/make_opposites.py > data/opposites.jsonl` reproduces the file.
"""
import json
import random

PAIRS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("old", "young"), ("tall", "short"), ("wet", "dry"), ("open", "closed"),
    ("early", "late"), ("rich", "poor"), ("full", "empty"), ("hard", "soft"), ("loud", "quiet"),
    ("strong", "weak"), ("clean", "dirty"), ("thick", "thin"), ("night", "day"), ("win", "lose"),
    ("push", "pull"), ("start", "finish"), ("buy", "sell"), ("left", "right"), ("inside", "outside"),
    ("before", "after"), ("first", "last"), ("always", "never"), ("love", "hate"), ("true", "false"),
    ("alive", "dead"), ("arrive", "leave"), ("above", "below"), ("cheap", "expensive"),
    ("friend", "enemy"), ("give", "take"), ("high", "low"), ("laugh", "cry"), ("near", "far"),
    ("north", "south"), ("east", "west"), ("question", "answer"), ("remember", "forget"),
    ("safe", "dangerous"), ("sweet", "sour"), ("wide", "narrow"), ("sunrise", "sunset"),
    ("summer", "winter"), ("entrance", "exit"), ("asleep", "awake"),
]
TEMPLATES = [
    "What is the opposite of \"{word}\"?",
    "Which word means the opposite of \"{word}\"?",
    "Choose the antonym of \"{word}\".",
    "\"{word}\" is the opposite of which word?",
]
LETTERS = "ABCD"


def main():
    rng = random.Random(20261205)
    words = sorted({w for pair in PAIRS for w in pair})
    seen = set()
    rows = []
    while len(rows) < 400:
        word, opposite = rng.choice(PAIRS)
        if rng.random() < 0.5:
            word, opposite = opposite, word
        pair = {word, opposite}
        wrong = rng.sample([w for w in words if w not in pair], 3)
        options = wrong + [opposite]
        rng.shuffle(options)
        question = rng.choice(TEMPLATES).format(word=word)
        key = (question, tuple(options))
        if key in seen:
            continue
        seen.add(key)
        rows.append({
            "id": f"opposites-{len(rows) + 1}",
            "question": question,
            "options": options,
            "answer": LETTERS[options.index(opposite)],
        })
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
