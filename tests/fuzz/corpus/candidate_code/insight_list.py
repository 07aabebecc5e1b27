"""name: Insight list
idea: Distil each episode into short general rules, by kind of object rather than by object
("things like a shirt go in the wardrobe"), count how often each rule was confirmed, and show
the best-supported ones: a rule-based cousin of Dynamic Cheatsheet / insight memories.
"""
MAX_INSIGHTS = 20


def _head(name):
    words = name.split()
    return words[-1] if words else name


class Memory:
    def __init__(self):
        self.support = {}

    def retrieve(self, observation):
        confirmed = [kv for kv in self.support.items() if kv[1] > 0]
        ranked = sorted(confirmed, key=lambda kv: (-kv[1], kv[0]))[:MAX_INSIGHTS]
        return "\n".join(f"Insight: a {head} usually goes in the {place} (seen {n}x)" for (head, place), n in ranked)

    def update(self, observation, trajectory, reward):
        before = 0.0
        for step in trajectory:
            action = step["action"]
            if action.startswith("put ") and " in " in action:
                thing, place = action[4:].split(" in ", 1)
                key = (_head(thing), place)
                if step["score"] > before:
                    self.support[key] = self.support.get(key, 0) + 1
                elif step["score"] < before:
                    self.support[key] = self.support.get(key, 0) - 1
            before = step["score"]
