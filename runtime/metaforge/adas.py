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


def _grid_text(grid):
    return "[" + ",".join("[" + ",".join(map(str, row)) + "]" for row in grid) + "]"


def _transform_of(code):
    """The `transform` a generated program defines, or the error text ADAS's helpers give."""
    local_vars = {}
    try:
        exec(code, {}, local_vars)
    except Exception as e:
        return None, f"Error during code execution: {e}"
    if "transform" not in local_vars:
        return None, "Function 'transform' not found in the code."
    return local_vars["transform"], None


class AgentSystem:
    """The `self` an ADAS forward receives. On ARC tasks (a task with `train` pairs and a
    `test_input`) it has ADAS's two code helpers, which run a generated `transform(grid)`
    on the examples and on the test input, here inside the candidate's sandbox."""

    def __init__(self, task=None):
        task = task if isinstance(task, dict) else {}
        self.examples = task.get("train", [])
        self.test_iuput = task.get("test_input")  # ADAS's spelling, which its agents may read

    def run_examples_and_get_feedback(self, code):
        author = None
        if isinstance(code, Info):
            author, code = code.author, code.content
        evaluator = f"{author}'s code evaluator" if author else "code evaluator"
        correct, wrong = [], []
        transform, error = _transform_of(code)
        if error:
            return Info("feedback", evaluator, error, -1), correct, wrong
        feedback = ""
        for idx, example in enumerate(self.examples):
            try:
                got = transform(example["input"])
            except Exception as e:
                return Info("feedback", evaluator, f"Error during function execution: {e}", -1), correct, wrong
            if got == example["output"]:
                feedback += f"Your transform function generates a CORRECT answer in Example {idx}!\n\n"
                correct.append(example)
            else:
                try:
                    got = _grid_text(got)
                except Exception:
                    pass
                feedback += (
                    f"Your transform function generates a WRONG answer in Example {idx}!\n"
                    f"Expect: See above Example {idx} output.\nYou got: {got}\n"
                    f"Observe the Example {idx} carefully!\n\n"
                )
                wrong.append(example)
        return Info("feedback", evaluator, feedback, -1), correct, wrong

    def get_test_output_from_code(self, code):
        author = None
        if isinstance(code, Info):
            author, code = code.author, code.content
        evaluator = f"{author}'s code evaluator" if author else "code evaluator"
        transform, error = _transform_of(code)
        if error:
            return Info("answer", evaluator, error, -1)
        try:
            return Info("answer", evaluator, _grid_text(transform(self.test_iuput)), -1)
        except Exception as e:
            return Info("answer", evaluator, f"Error during function execution: {e}", -1)


def run_adas_forward(forward, task):
    """Calls an ADAS `forward(self, taskInfo)` on a metaforge task dict; returns a string."""
    _reset_ids()
    question = task.get("question") if isinstance(task, dict) else None
    content = question if question is not None else _json.dumps(task)
    result = forward(AgentSystem(task), Info("task", "User", content, -1))
    if isinstance(result, Info):
        return str(result.content)
    return result if isinstance(result, str) else str(result)


__all__ = ["Info", "LLMAgentBase", "AgentSystem", "FORMAT_INST", "ROLE_DESC", "run_adas_forward"]
