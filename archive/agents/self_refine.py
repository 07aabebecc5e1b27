"""name: Self-Refine (Reflexion)
idea: Draft an answer, ask the model to criticise it, and rewrite it until the critic says it
is correct or the round budget runs out (Madaan et al., 2023; Shinn et al., 2023).
"""
from metaforge import llm, task_text

INSTRUCTION = "Solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
CRITIC = "Check the solution. If it is correct reply exactly CORRECT, otherwise explain the mistake."
MAX_ROUNDS = 2
TEMPERATURE = 0.0


def forward(task):
    question = task_text(task)
    answer = llm(f"{INSTRUCTION}\n\nProblem: {question}", temperature=TEMPERATURE)
    for _ in range(MAX_ROUNDS):
        critique = llm(f"{CRITIC}\n\nProblem: {question}\nSolution: {answer}", temperature=TEMPERATURE)
        if "CORRECT" in critique.upper()[:40]:
            break
        answer = llm(
            f"{INSTRUCTION}\n\nProblem: {question}\nA previous attempt: {answer}\n"
            f"Feedback: {critique}\nWrite a corrected solution.",
            temperature=TEMPERATURE,
        )
    return answer
