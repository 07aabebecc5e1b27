"""The agent API that candidate programs import: `from metaforge import llm`.

llm(prompt_or_messages, *, temperature=None, n=1, json=False, max_tokens=None,
    stop=None, contract=None, input=None)
    -> str when n == 1, else list[str]; with `contract`, the value the contract parsed

`contract="id"` names an entry of the module-level literal `CONTRACTS = {"id": {...}}`;
the host (never this process) checks every answer against it, asks again up to
`max_attempts` times, and returns the contract's fallback when no answer passes.
`input` is the JSON-able dict the contract's `pre`, `post` and fallback read.
`stop` is a string or a list of up to 4 strings: generation ends where one appears, and the
reply stops before it (as OpenAI-compatible endpoints do).

`calc`, `calc_in` and `extract` (metaforge.tools) are tools every candidate may use: a safe
calculator, and answer-extraction strategies.

The call travels over the worker's RPC pipe to the host gateway, which owns the model,
the cache, the budget and the accounting. The candidate never sees a key or a socket.
"""
from metaforge._rpc import ContractError, LLMError, call_llm
from metaforge.tools import EXTRACTORS, calc, calc_in, extract

__all__ = ["llm", "LLMError", "ContractError", "calc", "calc_in", "extract", "EXTRACTORS"]


def llm(prompt_or_messages, *, temperature=None, n=1, json=False, max_tokens=None,
        stop=None, contract=None, input=None):
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
    if contract is not None and not isinstance(contract, str):
        raise TypeError("llm(): contract must be the id (a string) of an entry of CONTRACTS")
    texts = call_llm(messages, temperature=temperature, n=n, json=bool(json),
                     max_tokens=max_tokens, stop=stop, contract=contract, input=input)
    return texts[0] if n == 1 else texts


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


def majority(answers):
    """Return the answer whose key is most common (first seen wins ties)."""
    answers = list(answers)
    if not answers:
        return ""
    counts = {}
    first = {}
    for a in answers:
        k = answer_key(a)
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, a)
    best = max(counts, key=lambda k: counts[k])
    return first[best]


__all__ += ["answer_key", "majority"]
