"""name: LLM Debate
idea: Several agents with different roles answer, read each other's answers for a few rounds,
and a final judge decides at a low temperature (Du et al., 2023).
"""
from metaforge import llm, task_text

INSTRUCTION = "Solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
ROLES = ["careful math teacher", "sceptical grader", "fast mental calculator"]
ROUNDS = 2
TEMPERATURE = 0.8
FINAL_TEMPERATURE = 0.1


def forward(task):
    question = task_text(task)
    answers = ["" for _ in ROLES]
    for round_index in range(ROUNDS):
        others = "\n".join(f"- {a}" for a in answers if a)
        for i, role in enumerate(ROLES):
            prompt = f"You are a {role}. {INSTRUCTION}\n\nProblem: {question}"
            if round_index > 0:
                prompt += f"\nOther agents answered:\n{others}\nConsider them, then give your answer."
            answers[i] = llm(prompt, temperature=TEMPERATURE)
    summary = "\n".join(f"- {a}" for a in answers)
    return llm(
        f"Problem: {question}\nCandidate solutions:\n{summary}\n"
        f"Decide which is right. Finish with a line 'Answer: <{{ answer.slot }}>'.",
        temperature=FINAL_TEMPERATURE,
    )
