"""name: No memory
idea: The baseline every design is measured against: nothing is stored and nothing is
retrieved, so the base agent plays each episode as if it were the first.
"""


class Memory:
    def retrieve(self, observation):
        return ""

    def update(self, observation, trajectory, reward):
        pass
