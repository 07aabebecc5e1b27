"""name: Chain-of-Thought
idea: Ask the model to reason step by step before it commits to an answer, so the answer is
conditioned on its own intermediate steps (Wei et al., 2022).
"""
from metaforge import llm, task_text

INSTRUCTION = "Solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
TEMPERATURE = 0.0


def forward(task):
    prompt = f"{INSTRUCTION}\n\nProblem: {task_text(task)}"
    return llm(prompt, temperature=TEMPERATURE)
