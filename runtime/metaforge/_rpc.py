"""Worker side of the host RPC: one writer lock, one waiting slot per llm() request."""
import _thread
import itertools
import json
import threading

_out = None
_write_lock = threading.Lock()
_pending = {}
_pending_lock = threading.Lock()
_ids = itertools.count(1)
current = threading.local()


class LLMError(RuntimeError):
    """Raised inside the candidate when the host refuses or fails a model call."""


class ContractError(LLMError):
    """Raised when a contract refuses the call: a broken precondition, a denied action, or
    no answer (and no fallback) that satisfies the contract."""


class _Slot:
    """Where one request's answer lands. A bare lock, taken at creation and released by
    `deliver`, is the waiting: threading.Event builds a Condition (a Python-level lock
    dance) per wait, which showed in the per-call cost with an instant model."""
    __slots__ = ("lock", "reply")

    def __init__(self):
        self.lock = _thread.allocate_lock()
        self.lock.acquire()
        self.reply = None

    def wait(self):
        self.lock.acquire()

    def set(self, reply):
        self.reply = reply
        self.lock.release()


def connect(stream):
    global _out
    _out = stream


def send(message):
    line = json.dumps(message, ensure_ascii=False)
    with _write_lock:
        _out.write(line + "\n")
        _out.flush()


def inherit_task_in_threads(max_threads=0, per_task=0):
    """Threads a task starts make their llm() calls as that task, so per-task budgets and
    accounting cover them (the host refuses unattributed calls under an agent contract).

    `per_task` (0: none) caps the threads one task runs at once, `max_threads` (0: none)
    those of the whole worker. Why caps here and not only the address-space limit: a flood
    that runs into RLIMIT_AS leaves the interpreter no memory to report its tasks, and a
    thread that fails to boot for want of memory hangs its starter in `Thread.start` for
    good; either way a timeout, not the error it is. Why a per-task share: with the
    worker-wide cap alone, whether a task's fan-out fit depended on what the other tasks
    ran at that moment. The shares add up to less than `max_threads`, which then binds
    only threads a task left running after it returned."""
    start = threading.Thread.start
    alive = {}  # task id -> threads of that task running now
    lock = threading.Lock()

    def start_as_task(self):
        task_id = getattr(current, "task_id", None)
        if task_id is not None and per_task:
            with lock:
                if alive.get(task_id, 0) >= per_task:
                    raise RuntimeError(
                        f"can't start new thread: this task already runs {per_task} threads, "
                        "its share of what the worker's memory limit allows (raise [evaluation] "
                        "memory_mb, or lower tasks_in_flight, for more)")
                alive[task_id] = alive.get(task_id, 0) + 1
        if max_threads and threading.active_count() >= max_threads:
            _release(task_id)
            raise RuntimeError(
                f"can't start new thread: this worker already runs {max_threads} threads, "
                "the most its memory limit allows (raise [evaluation] memory_mb for more)")
        model = getattr(current, "model", None)
        if task_id is not None:
            run = self.run

            def run_as_task():
                current.task_id = task_id
                current.model = model
                try:
                    run()
                finally:
                    _release(task_id)

            self.run = run_as_task
        try:
            start(self)
        except BaseException:
            _release(task_id)
            raise

    def _release(task_id):
        if task_id is not None and per_task:
            with lock:
                left = alive.get(task_id, 0) - 1
                if left > 0:
                    alive[task_id] = left
                else:
                    alive.pop(task_id, None)

    threading.Thread.start = start_as_task


def call_llm(messages, *, temperature, n, json, max_tokens, stop=None, choices=None,
             contract=None, input=None, model=None):
    request_id = next(_ids)
    slot = _Slot()
    with _pending_lock:
        _pending[request_id] = slot
    send({"type": "llm", "id": request_id, "task_id": getattr(current, "task_id", None),
          "messages": messages, "temperature": temperature, "n": n, "json": json,
          "max_tokens": max_tokens, "stop": stop, "choices": choices, "contract": contract,
          "input": input, "model": model})
    slot.wait()
    reply = slot.reply
    if reply.get("error"):
        raise (ContractError if reply.get("contract") else LLMError)(reply["error"])
    return list(reply["texts"])


def play_episode(episode, memory):
    """Asks the host to play `episode` with the base agent, `memory` (text, or None in the
    fill phase) in its prompt; returns {"observation", "trajectory", "reward"}. The host
    plays and scores: memory code never reaches the game."""
    request_id = next(_ids)
    slot = _Slot()
    with _pending_lock:
        _pending[request_id] = slot
    send({"type": "episode", "id": request_id, "task_id": getattr(current, "task_id", None),
          "episode": episode, "memory": memory})
    slot.wait()
    reply = slot.reply
    if reply.get("error"):
        raise LLMError(reply["error"])
    return reply["result"]


def deliver(message):
    with _pending_lock:
        slot = _pending.pop(message.get("id"), None)
    if slot is not None:
        slot.set(message)


def fail_pending(reason):
    with _pending_lock:
        slots = list(_pending.values())
        _pending.clear()
    for slot in slots:
        slot.set({"error": reason})
