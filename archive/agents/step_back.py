"""name: Step-back Abstraction
idea: First ask which principles or formulas the problem needs, then solve it with those
principles in view (Zheng et al., 2023).
"""
from metaforge import llm, task_text

PRINCIPLES = "What general principle or formula is needed to solve this problem? Be brief."
INSTRUCTION = "Using the principle, solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
TEMPERATURE = 0.0


def forward(task):
    question = task_text(task)
    principle = llm(f"{PRINCIPLES}\n\nProblem: {question}", temperature=TEMPERATURE)
    return llm(f"Principle: {principle}\n{INSTRUCTION}\n\nProblem: {question}", temperature=TEMPERATURE)
