"""name: Self-Consistency with Chain-of-Thought
idea: Sample several independent reasoning chains at a high temperature and return the
answer most of them agree on (Wang et al., 2023).
"""
from metaforge import llm, majority, task_text

INSTRUCTION = "Solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
N_SAMPLES = 5
TEMPERATURE = 0.8


def forward(task):
    prompt = f"{INSTRUCTION}\n\nProblem: {task_text(task)}"
    answers = llm(prompt, temperature=TEMPERATURE, n=N_SAMPLES)
    return majority(answers, task)
