"""The worker's side of evaluating a memory design (candidate kind `memory`).

ALMA's protocol: the episode sequence arrives as one task. Its fill episodes (each marked
with its phase; the first half unless the experiment sets a count) fill the memory: each episode is played by the host's base agent without retrieval, then
`update(observation, trajectory, reward)` sees it, in order. The rest are scored: the
memory is frozen, `retrieve(observation)` writes the text the base agent is given, and the
host plays those episodes (in parallel; they no longer depend on each other).

The host plays and scores every episode (runtime/envs/twc_server.py); this module only asks
for plays and calls the design. An exception in `retrieve` or `update` is recorded against
its episode and the sequence goes on, as in ALMA (that episode's retrieval counts as empty).
"""
import json
import threading

from metaforge import _rpc


def memory_entry(namespace):
    """The `Memory` class a memory design defines, or None when it defines none."""
    cls = namespace.get("Memory")
    if not isinstance(cls, type):
        return None
    for method in ("retrieve", "update"):
        if not callable(getattr(cls, method, None)):
            raise RuntimeError(f"class Memory has no method `{method}`")
    return lambda task: run_sequence(cls, task)


def _error(exc):
    if isinstance(exc, MemoryError):
        return "MemoryError", "MemoryError (no traceback: formatting it needs memory)"
    try:
        import traceback

        tb = traceback.format_exc(limit=12)
    except BaseException:
        tb = None
    return f"{type(exc).__name__}: {exc}"[:1000], tb


def run_sequence(memory_cls, task):
    episodes = task["episodes"]
    limit = int(task.get("retrieve_chars", 4000))
    memory = memory_cls()
    records = []
    for ep in episodes:
        if ep["phase"] != "fill":
            continue
        record = {"episode": ep["id"], "phase": "fill"}
        played = _rpc.play_episode(ep["id"], None)
        try:
            memory.update(dict(ep["observation"]), list(played["trajectory"]), float(played["reward"]))
        except BaseException as exc:  # the design may raise anything, SystemExit included
            record["error"], record["traceback"] = _error(exc)
        records.append(record)

    scored = []
    for ep in episodes:
        if ep["phase"] != "score":
            continue
        record = {"episode": ep["id"], "phase": "score"}
        text = ""
        try:
            got = memory.retrieve(dict(ep["observation"]))
            text = "" if got is None else got if isinstance(got, str) else str(got)
        except BaseException as exc:
            record["error"], record["traceback"] = _error(exc)
        record["memory_chars"] = len(text)
        if len(text) > limit:
            record["truncated"] = True
            text = text[:limit]
        records.append(record)
        scored.append((ep["id"], text))

    # Retrieval is done and the memory frozen: the plays are independent, so they overlap.
    failures = []

    def play(episode, text):
        try:
            _rpc.play_episode(episode, text)
        except BaseException as exc:
            failures.append(f"{episode}: {exc}")

    threads = [threading.Thread(target=play, args=item, daemon=True) for item in scored]
    width = max(1, int(task.get("parallel", 4)))
    for i in range(0, len(threads), width):
        wave = threads[i:i + width]
        for t in wave:
            t.start()
        for t in wave:
            t.join()
    if failures:
        raise RuntimeError("the host could not play: " + "; ".join(failures[:3]))
    return json.dumps({"records": records})
