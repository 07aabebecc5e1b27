"""name: Insight list, places only
idea: A control for the Insight list seed (archive/memory/insight_list.py), not a seed: the
same rules, ranked and worded the same, with every object replaced by "thing". What it keeps
of the seed's gain over no memory is what naming the places alone does for the player, with
nothing about which object goes where (benches/RESULTS.md, "The memory proof").
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
        return "\n".join(f"Insight: a thing usually goes in the {place} (seen {n}x)" for (head, place), n in ranked)

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
