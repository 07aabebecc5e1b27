"""name: Quality-Diversity
idea: Produce several deliberately different attempts, each told what was already tried,
then let a final decision pick among them (inspired by quality-diversity search).
"""
from metaforge import llm, task_text

INSTRUCTION = "Solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
N_ATTEMPTS = 3
TEMPERATURE = 0.8
FINAL_TEMPERATURE = 0.1


def forward(task):
    question = task_text(task)
    attempts = []
    for _ in range(N_ATTEMPTS):
        tried = "\n".join(f"- {a}" for a in attempts)
        prompt = f"{INSTRUCTION}\n\nProblem: {question}"
        if attempts:
            prompt += f"\nApproaches already tried:\n{tried}\nTry a different approach."
        attempts.append(llm(prompt, temperature=TEMPERATURE))
    listing = "\n".join(f"- {a}" for a in attempts)
    return llm(
        f"Problem: {question}\nSolutions:\n{listing}\n"
        f"Pick the most reliable one. Finish with a line 'Answer: <{{ answer.slot }}>'.",
        temperature=FINAL_TEMPERATURE,
    )
