"""name: Direct Answer
idea: The baseline: ask for the answer only, with no reasoning. Small models often do better
when they are not asked to write long chains they cannot keep consistent.
"""
from metaforge import llm, task_text

INSTRUCTION = "Answer the question with {{ answer.format }} and nothing else."
TEMPERATURE = 0.0


def forward(task):
    prompt = f"{INSTRUCTION}\n\nQuestion: {task_text(task)}\nAnswer:"
    return llm(prompt, temperature=TEMPERATURE)
