"""name: Dynamic Assignment of Roles
idea: A router reads the problem and picks the expert best suited to it; the chosen expert
then answers in character.
"""
from metaforge import llm, task_text

EXPERTS = {
    "math": "You are a math professor who checks every calculation.",
    "teacher": "You are a grade-school teacher who explains simply.",
    "logic": "You are a logician who reasons carefully about what is asked.",
}
ROUTER = "Which expert should answer this problem: math, teacher or logic? Reply with one word."
INSTRUCTION = "Solve the problem step by step. Finish with a line 'Answer: <{{ answer.slot }}>'."
TEMPERATURE = 0.0


def forward(task):
    question = task_text(task)
    choice = llm(f"{ROUTER}\n\nProblem: {question}", temperature=TEMPERATURE).strip().lower()
    role = next((EXPERTS[k] for k in EXPERTS if k in choice), EXPERTS["math"])
    messages = [
        {"role": "system", "content": role},
        {"role": "user", "content": f"{INSTRUCTION}\n\nProblem: {question}"},
    ]
    return llm(messages, temperature=TEMPERATURE)
