"""name: Key-value facts (SQLite)
idea: Store (object -> location) facts in an SQLite table of the memory's own: a put that
raised the score confirms a fact, one that lowered it records a mistake. Before an episode,
retrieve the facts about the objects the observation mentions, and the mistakes to avoid.
"""
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (object TEXT PRIMARY KEY, location TEXT NOT NULL, confirmed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mistakes (object TEXT NOT NULL, location TEXT NOT NULL, PRIMARY KEY (object, location));
"""


class Memory:
    def __init__(self):
        self.db = sqlite3.connect("memory.sqlite", check_same_thread=False)
        self.db.executescript(SCHEMA)

    def retrieve(self, observation):
        seen = observation.get("observation", "").lower()
        lines = []
        for obj, loc in self.db.execute("SELECT object, location FROM facts ORDER BY confirmed DESC"):
            if obj.lower() in seen:
                lines.append(f"{obj} -> {loc}")
        for obj, loc in self.db.execute("SELECT object, location FROM mistakes"):
            if obj.lower() in seen:
                lines.append(f"not: {loc} for {obj}")
        return "\n".join(lines)

    def update(self, observation, trajectory, reward):
        before = 0.0
        for step in trajectory:
            action = step["action"]
            if action.startswith("put ") and " in " in action:
                obj, loc = action[4:].split(" in ", 1)
                if step["score"] > before:
                    self.db.execute(
                        "INSERT INTO facts VALUES (?, ?, 1) ON CONFLICT(object) DO UPDATE "
                        "SET location = excluded.location, confirmed = confirmed + 1",
                        (obj, loc),
                    )
                elif step["score"] < before:
                    self.db.execute("INSERT OR IGNORE INTO mistakes VALUES (?, ?)", (obj, loc))
            before = step["score"]
        self.db.commit()
