"""Tools and answer handling that any candidate may use: `from metaforge import calc, extract`.

They are general building blocks, not solvers: `calc` evaluates an arithmetic expression the
model wrote (a small model translates words into `12 * 5 + 1` more reliably than it
multiplies), and `extract` picks the part of a reply that is the answer, because a small
model often runs on past its answer and a scorer reading the whole text picks the wrong part.

Answers from a closed set (`task_text`, `task_choices`, `option_texts`, `as_choice`) let one
agent serve a number task, a multiple-choice task and a label task alike. They read only the
task's own fields, never a domain's content. A task offers choices in one of two ways:
`choices` (a list of labels, set per task or for the whole domain by `domain.choices`), or
`options` (a list of option texts, answered by their letters A, B, C, ...). A task with
neither has a free answer, and these helpers hand it back unchanged.
"""
import ast
import difflib
import re

__all__ = ["calc", "calc_in", "extract", "EXTRACTORS", "task_text", "task_choices", "option_texts",
           "as_choice"]

_MAX_CHARS = 200
_MAX_MAGNITUDE = 1e15
_MAX_EXPONENT = 12

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}


def _value(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(b) > _MAX_EXPONENT or abs(a) > 1e6:
                raise ValueError("calc: exponent or base too large")
            out = a ** b
        elif type(node.op) in _BINARY:
            out = _BINARY[type(node.op)](a, b)
        else:
            raise ValueError(f"calc: operator {type(node.op).__name__} is not supported")
        if isinstance(out, complex) or abs(out) > _MAX_MAGNITUDE:
            raise ValueError("calc: result out of range")
        return out
    raise ValueError(f"calc: {type(node).__name__} is not arithmetic")


def _normalise(expression):
    text = str(expression).strip()
    for a, b in (("×", "*"), ("÷", "/"), ("−", "-"), ("^", "**"), (",", "")):
        text = text.replace(a, b)
    # "3 x 4" and "3x4" mean multiplication in written arithmetic.
    text = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", text)
    return text.strip().rstrip("=").strip()


def calc(expression):
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses), as an
    int when it is whole. Raises ValueError for anything else: names, calls, attributes,
    huge numbers. Nothing is executed: the expression is parsed and walked."""
    text = _normalise(expression)
    if not text or len(text) > _MAX_CHARS:
        raise ValueError("calc: empty or overlong expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"calc: not an expression: {text!r}") from e
    try:
        value = _value(tree.body)
    except ZeroDivisionError as e:
        raise ValueError("calc: division by zero") from e
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return round(value, 6) if isinstance(value, float) else value


_EXPRESSION = re.compile(r"[-(]*\d[\d.,]*(?:\s*(?:\*\*|[-+*/x×÷%^])\s*[-(]*\d[\d.,]*\)*)+\)*")


def calc_in(text):
    """The value of the first arithmetic expression found in free text (`"so 12 * 5 + 1 = "`),
    or None when there is none that `calc` accepts."""
    for m in _EXPRESSION.finditer(str(text)):
        try:
            return calc(m.group(0))
        except ValueError:
            continue
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _first_line(text):
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _after_answer(text):
    parts = re.split(r"(?i)answer\s*(?:is)?\s*[:=]", str(text))
    return _first_line(parts[-1]) if len(parts) > 1 else _first_line(text)


def _first_number(text):
    m = _NUMBER.search(str(text))
    return m.group(0).replace(",", "") if m else str(text).strip()


def _last_number(text):
    found = _NUMBER.findall(str(text))
    return found[-1].replace(",", "") if found else str(text).strip()


# The strategies `extract` takes, by name: each a function from a reply to its answer part.
EXTRACTORS = {
    "first_line": _first_line,
    "after_answer": _after_answer,
    "first_number": _first_number,
    "last_number": _last_number,
    "whole": lambda text: str(text).strip(),
}


def extract(text, how="first_line"):
    """The part of a model reply that is the answer, by one of the strategies in
    `EXTRACTORS`: first_line, after_answer, first_number, last_number, whole."""
    try:
        return EXTRACTORS[how](text)
    except KeyError:
        raise ValueError(f"extract: unknown strategy {how!r}; use one of {sorted(EXTRACTORS)}") \
            from None

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def task_text(task):
    """The task as the model reads it: its `question`, then its options one per line
    (`A) ...`) when it has them. For a task with only a question, the question itself."""
    if not isinstance(task, dict):
        return str(task)
    text = str(task.get("question", ""))
    options = task.get("options")
    if isinstance(options, (list, tuple)) and options:
        text += "\n" + "\n".join(f"{_LETTERS[i]}) {o}" for i, o in enumerate(options[:26]))
    return text


def task_choices(task):
    """The answers the task allows, as the scorer expects them: its `choices`, or the
    letters of its `options`; None for a free answer."""
    if not isinstance(task, dict):
        return None
    choices = task.get("choices")
    if isinstance(choices, (list, tuple)) and choices:
        return [str(c) for c in choices]
    options = task.get("options")
    if isinstance(options, (list, tuple)) and options:
        return list(_LETTERS[: min(len(options), 26)])
    return None


def option_texts(task):
    """What each allowed answer says, in `task_choices` order: the option texts of a task
    with options, else the choices themselves; None for a free answer. A model often
    recognises the right text more easily than the letter in front of it."""
    if isinstance(task, dict):
        options = task.get("options")
        if isinstance(options, (list, tuple)) and options:
            return [str(o) for o in options[:26]]
    return task_choices(task)


def _named(text, word, letters):
    """Where `word` first stands alone in `text`: a letter only in capitals and marked as
    one (`B`, `(B)`, `B)`, `B.`), so the article "a" is not read as option A."""
    if letters:
        m = re.search(r"(?:^|[^A-Za-z])\(?" + re.escape(word) + r"(?:[).:,]|\s|$)", text)
    else:
        m = re.search(r"(?<![0-9A-Za-z])" + re.escape(word.lower()) + r"(?![0-9A-Za-z])",
                      text.lower())
    return m.start() if m else None


def as_choice(reply, task):
    """The allowed answer a free-text reply means: the choice it names first (a letter, or a
    label as a whole word), else the option whose text it names first, else the choice or
    option closest to it in spelling. A task with a free answer gets `reply` back unchanged."""
    choices = task_choices(task)
    text = str(reply)
    if not choices:
        return text
    letters = all(len(c) == 1 and c.isupper() for c in choices)
    after = re.split(r"(?i)answer\s*(?:is)?\s*[:=]", text)
    for scope in ([after[-1]] if len(after) > 1 else []) + [text]:
        found = [(at, i) for i, c in enumerate(choices)
                 if (at := _named(scope, c, letters)) is not None]
        if found:
            return choices[min(found)[1]]
    texts = option_texts(task)
    found = [(at, i) for i, t in enumerate(texts) if (at := _named(text, t, False)) is not None]
    if found:
        return choices[min(found)[1]]
    low = text.strip().lower()
    scores = [difflib.SequenceMatcher(None, low, t.lower()).ratio() for t in texts]
    return choices[max(range(len(texts)), key=lambda i: (scores[i], -i))]
