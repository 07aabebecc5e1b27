"""name: Trajectory retrieval
idea: Keep the action sequences of the last K successful episodes and show them before the
next one, so the agent can copy what worked (ALMA's "Trajectory Retrieval" baseline, without
embeddings: most recent first).
"""
K = 4
MIN_REWARD = 0.75


class Memory:
    def __init__(self):
        self.episodes = []

    def retrieve(self, observation):
        if not self.episodes:
            return ""
        blocks = []
        for actions in reversed(self.episodes[-K:]):
            blocks.append("Solved before with: " + "; ".join(actions))
        return "\n".join(blocks)

    def update(self, observation, trajectory, reward):
        if reward < MIN_REWARD:
            return
        actions = [step["action"] for step in trajectory if step["action"].startswith(("take ", "put "))]
        if actions:
            self.episodes.append(actions)
