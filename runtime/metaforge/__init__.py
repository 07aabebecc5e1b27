"""The agent API that candidate programs import: `from metaforge import llm`. Every name in
`__all__` is what the meta-model's prompts list, with its signature and docstring
(`src/propose/agent_api.rs` reads them from this source).
"""
import contextlib

from metaforge._rpc import ContractError, LLMError, call_llm
from metaforge._rpc import current as _current
from metaforge.tools import EXTRACTORS, calc, calc_in, extract
from metaforge.tools import as_choice, option_texts, task_choices, task_text

__all__ = ["llm", "LLMError", "ContractError", "calc", "calc_in", "extract", "EXTRACTORS",
           "task_text", "task_choices", "option_texts", "as_choice", "use_model"]


def llm(prompt_or_messages, *, temperature=None, n=1, json=False, max_tokens=None,
        stop=None, choices=None, contract=None, input=None, model=None):
    """The one way to reach a model. Returns the reply (a str), or a list of n replies when
    n > 1; with `contract`, the value the contract parsed.

    prompt_or_messages: a prompt string, or a list of {"role", "content"} dicts.
    temperature, max_tokens: override the experiment's settings for this call.
    n: independent samples (1 to 16). json: ask for a JSON object.
    stop: a string or a list of up to 4: generation ends where one appears, and the reply
      stops before it.
    choices: a list of up to 64 distinct short strings: the reply is exactly one of them
      (the embedded model returns the most likely one at temperature 0, and samples held to
      them above it; an endpoint is asked for a JSON-schema enum, or its reply is read as
      the choice it names and asked again).
    contract: the id of an entry of the module-level literal `CONTRACTS = {"id": {...}}`;
      the host checks every answer against it, asks again, and returns its fallback when
      no answer passes. input: the JSON-able dict the contract's rules read.
    model: the name of one of the experiment's agent models; default the one `use_model`
      set, else the experiment's first.
    Raises LLMError when the host refuses or fails the call (ContractError for a contract).
    """
    if isinstance(prompt_or_messages, str):
        messages = [{"role": "user", "content": prompt_or_messages}]
    elif isinstance(prompt_or_messages, (list, tuple)):
        messages = []
        for m in prompt_or_messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise TypeError("llm(): each message must be a dict with 'role' and 'content'")
            messages.append({"role": str(m["role"]), "content": str(m["content"])})
    else:
        raise TypeError("llm(): pass a prompt string or a list of {'role','content'} messages")
    if not isinstance(n, int) or n < 1 or n > 16:
        raise ValueError("llm(): n must be an int between 1 and 16")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else list(stop)
        if not 1 <= len(stop) <= 4 or not all(isinstance(x, str) and x for x in stop):
            raise ValueError("llm(): stop must be a non-empty string or a list of 1 to 4 of them")
    if choices is not None:
        if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
            raise TypeError("llm(): choices must be a list of strings")
        choices = [str(c) for c in choices]
        if not 1 <= len(choices) <= 64 or not all(c.strip() for c in choices):
            raise ValueError("llm(): choices must hold 1 to 64 non-empty strings")
        if len(set(choices)) != len(choices):
            raise ValueError("llm(): choices must be distinct")
    if model is None:
        model = getattr(_current, "model", None)
    if model is not None and (not isinstance(model, str) or not 1 <= len(model) <= 64):
        raise ValueError("llm(): model must be the name of one of the experiment's agent models")
    if contract is not None and not isinstance(contract, str):
        raise TypeError("llm(): contract must be the id (a string) of an entry of CONTRACTS")
    texts = call_llm(messages, temperature=temperature, n=n, json=bool(json),
                     max_tokens=max_tokens, stop=stop, choices=choices, contract=contract,
                     input=input, model=model)
    return texts[0] if n == 1 else texts


@contextlib.contextmanager
def use_model(name):
    """Within the block, llm() calls that name no model go to agent model `name`, in this
    thread and in the threads it starts. `name` is one of the experiment's agent models
    (None: back to the first). A cheap model first and a strong one when a check fails:

        with use_model("cheap"):
            answer = solve(task)
    """
    before = getattr(_current, "model", None)
    _current.model = name
    try:
        yield
    finally:
        _current.model = before


def answer_key(text):
    """The part of an answer that votes compare: the last number if there is one, else the
    last non-empty line, lower-cased. Shared by seeds and operators so votes agree with
    numeric scorers."""
    import re

    text = str(text)
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if numbers:
        raw = numbers[-1].replace(",", "")
        try:
            value = float(raw)
            return str(int(value)) if value == int(value) else str(value)
        except ValueError:
            return raw
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].lower() if lines else ""


def majority(answers, task=None):
    """Return the answer whose key is most common (first seen wins ties). With the `task`
    of a choice or label task, each answer is first read as the choice it names
    (`as_choice`), so "B", "(B) cat" and "the answer is B" vote together."""
    answers = list(answers)
    if not answers:
        return ""
    if task is not None and task_choices(task):
        answers = [as_choice(a, task) for a in answers]
    counts = {}
    first = {}
    for a in answers:
        k = answer_key(a)
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, a)
    best = max(counts, key=lambda k: counts[k])
    return first[best]


__all__ += ["answer_key", "majority"]
