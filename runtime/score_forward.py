# Appended by the host to a user's scorer file (`[domain] scorer = "score.py"`), which then
# runs in its own sandboxed worker like a candidate. The worker calls forward(item) once per
# task; here an item is {"task": the whole task, gold fields included, "output": the
# candidate's output}. What score() returns is checked here and sent back as JSON.
import json as _metaforge_json
import math as _metaforge_math


def forward(item):
    result = score(item["task"], item["output"])
    feedback = ""
    if isinstance(result, dict):
        feedback = str(result.get("feedback", ""))[:2000]
        result = result.get("score")
    if isinstance(result, bool):
        result = 1.0 if result else 0.0
    if not isinstance(result, (int, float)) or isinstance(result, bool):
        raise TypeError(
            "score() returned %s; fix: return a number in [0, 1], a bool, or a dict "
            "{'score': number, 'feedback': text}" % type(result).__name__
        )
    result = float(result)
    if _metaforge_math.isnan(result) or not 0.0 <= result <= 1.0:
        raise ValueError("score() returned %r; fix: return a number in [0, 1]" % result)
    return _metaforge_json.dumps({"score": result, "feedback": feedback})
