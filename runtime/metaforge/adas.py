"""ADAS compatibility: `Info` and `LLMAgentBase` with the semantics of ADAS's search.py, so
ADAS-style agents (`def forward(self, taskInfo)`) run unchanged.

Differences from ADAS, on purpose:
- every call goes through metaforge's `llm()` (the host gateway: cache, budget, accounting);
  the `model` argument is accepted and ignored — ADAS hard-codes the evaluated model in this
  class (its issue #22), metaforge uses the run's agent model;
- agent ids are deterministic (a counter per task, not random strings), so prompts, and with
  them the call cache and replays, are reproducible.
"""
import json as _json
import re as _re
import threading as _threading
from collections import namedtuple

from metaforge import llm

Info = namedtuple("Info", ["name", "author", "content", "iteration_idx"])

FORMAT_INST = lambda request_keys: (  # noqa: E731 (ADAS's own definition)
    "Reply EXACTLY with the following JSON format.\n"
    f"{str(request_keys)}\n"
    "DO NOT MISS ANY REQUEST FIELDS and ensure that your response is a well-formed JSON object!\n"
)
ROLE_DESC = lambda role: f"You are a {role}."  # noqa: E731

_ids = _threading.local()


def _next_id():
    """Deterministic within a task: the n-th agent created by this task's thread."""
    _ids.n = getattr(_ids, "n", 0) + 1
    return f"a{_ids.n}"


def _reset_ids():
    _ids.n = 0


def _json_object(text):
    """The first JSON object in `text`, or {} (ADAS fills missing fields with '')."""
    try:
        value = _json.loads(text)
        return value if isinstance(value, dict) else {}
    except ValueError:
        pass
    match = _re.search(r"\{.*\}", text, _re.S)
    if match:
        try:
            value = _json.loads(match.group(0))
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}
    return {}


class LLMAgentBase:
    def __init__(self, output_fields, agent_name, role="helpful assistant", model=None, temperature=0.5):
        self.output_fields = list(output_fields)
        self.agent_name = agent_name
        self.role = role
        self.model = model
        self.temperature = temperature
        self.id = _next_id()

    def generate_prompt(self, input_infos, instruction):
        fields = {
            key: (
                f"Your {key}."
                if "answer" not in key
                else f"Your {key}. Return ONLY an integer. DO NOT return anything other than the integer answer."
            )
            for key in self.output_fields
        }
        system_prompt = ROLE_DESC(self.role) + "\n\n" + FORMAT_INST(fields)
        text = ""
        for info in input_infos:
            if not isinstance(info, Info):
                continue
            field_name, author, content, iteration_idx = info
            if author == self.__repr__():
                author += " (yourself)"
            if field_name == "task":
                text += f"# Your Task:\n{content}\n\n"
            elif iteration_idx != -1:
                text += f"### {field_name} #{iteration_idx + 1} by {author}:\n{content}\n\n"
            else:
                text += f"### {field_name} by {author}:\n{content}\n\n"
        return system_prompt, text + instruction

    def query(self, input_infos, instruction, iteration_idx=-1):
        system_prompt, prompt = self.generate_prompt(input_infos, instruction)
        reply = llm(
            [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}],
            temperature=self.temperature,
            json=True,
        )
        got = _json_object(reply)
        return [Info(key, self.__repr__(), str(got.get(key, "")), iteration_idx) for key in self.output_fields]

    def __repr__(self):
        return f"{self.agent_name} {self.id}"

    def __call__(self, input_infos, instruction, iteration_idx=-1):
        return self.query(input_infos, instruction, iteration_idx=iteration_idx)


class AgentSystem:
    """The `self` an ADAS forward receives."""


def run_adas_forward(forward, task):
    """Calls an ADAS `forward(self, taskInfo)` on a metaforge task dict; returns a string."""
    _reset_ids()
    question = task.get("question") if isinstance(task, dict) else None
    content = question if question is not None else _json.dumps(task)
    result = forward(AgentSystem(), Info("task", "User", content, -1))
    if isinstance(result, Info):
        return str(result.content)
    return result if isinstance(result, str) else str(result)


__all__ = ["Info", "LLMAgentBase", "AgentSystem", "FORMAT_INST", "ROLE_DESC", "run_adas_forward"]
