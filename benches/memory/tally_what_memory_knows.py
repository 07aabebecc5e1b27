"""Tallies the reports of the probe design `what_memory_knows.py` from `metaforge eval --json`
on stdin: what the fill episodes taught about the objects of each scored episode."""
import json
import sys


def tally(report):
    counts = {"a right place": 0, "only wrong places": 0, "a right place and wrong ones": 0}
    episodes = silent = 0
    for task in report["tasks"]:
        episodes += 1
        text = json.loads(task["output"] or "{}").get("memory", "")
        if not text:
            silent += 1
        for entry in filter(None, text.split("; ")):
            _, right, wrong = entry.rsplit("|", 2)
            if right != "right":
                counts["only wrong places"] += 1
            elif wrong != "0":
                counts["a right place and wrong ones"] += 1
            else:
                counts["a right place"] += 1
    print(f"{episodes} scored episodes; in {silent} the memory knows nothing about either object in view")
    for key, n in counts.items():
        print(f"objects in view whose memory holds {key}: {n}")


if __name__ == "__main__":
    tally(json.load(sys.stdin))
