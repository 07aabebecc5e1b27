"""name: Guarded Answer
idea: Ask for the final number only, and let a contract the host enforces make sure an integer
comes back: the answer is checked, asked for again with the violation as feedback up to three
times, and replaced by a fallback checked in advance when no reply passes (SEVerA's formally
guarded call).
answers: number
"""
from metaforge import llm, task_text

INSTRUCTION = "Solve the problem. Reply with the final number only."
TEMPERATURE = 0.0

CONTRACTS = {
    "answer": {
        "repair": ["last_number"],
        "regex": r"^-?\d+$",
        "parse": "int",
        "post": "output > -1000000000 && output < 1000000000",
        "max_attempts": 3,
        "on_fail": "reask",
        "fallback": {"const": 0},
    },
}


def forward(task):
    prompt = f"{INSTRUCTION}\n\nProblem: {task_text(task)}"
    value = llm(prompt, temperature=TEMPERATURE, contract="answer")
    return str(value)
