"""name: What the memory can know (a probe, never a seed)
idea: Before each scored episode, report for each object in view what the fill episodes
taught about it: a place where putting it raised the score, and how many places where putting
it lowered the score. Its text is a report, not advice, so the reward it gets means nothing;
what it reports says what any design could know when the episode starts.

`metaforge eval benches/memory/what_memory_knows.py --experiment experiments/memory-proof.toml
--db COPY --json | python3 benches/memory/tally_what_memory_knows.py` (COPY: a copy of an
archive of that experiment, so the plays are replayed) tallies the reports.
"""


class Memory:
    def __init__(self):
        self.right = {}
        self.wrong = {}

    def retrieve(self, observation):
        seen = observation.get("observation", "").lower()
        known = sorted(o for o in set(self.right) | set(self.wrong) if o.lower() in seen)
        return "; ".join(f"{o}|{'right' if o in self.right else '-'}|{len(self.wrong.get(o, ()))}" for o in known)

    def update(self, observation, trajectory, reward):
        before = 0.0
        for step in trajectory:
            action = step["action"]
            if action.startswith("put ") and " in " in action:
                thing, place = action[4:].split(" in ", 1)
                if step["score"] > before:
                    self.right[thing] = place
                elif step["score"] < before:
                    self.wrong.setdefault(thing, set()).add(place)
            before = step["score"]

