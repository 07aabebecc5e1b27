"""metaforge sandbox worker: runs ONE candidate over the tasks the host sends.

Why a separate process per candidate: candidate code is written by a model and is hostile
until proven otherwise. The host owns the process group, the deadline and the limits; this
file only loads the candidate, runs tasks on a thread pool (so llm() latency overlaps) and
speaks JSON lines on two dedicated pipes. The candidate's print() never reaches the
protocol: stdout is captured per task and truncated.

Usage: python3 -I -S worker.py --rpc-in FD --rpc-out FD --candidate FILE
       --tasks-in-flight N --stdout-limit BYTES
"""
import argparse
import json
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import metaforge  # noqa: E402  (the agent API: llm())
from metaforge import _rpc  # noqa: E402


class _TaskLocalStdout:
    """Routes print() of each task thread into that task's bounded buffer."""

    def __init__(self, limit):
        self.limit = limit
        self.local = threading.local()

    def begin(self):
        self.local.parts = []
        self.local.size = 0

    def end(self):
        parts = getattr(self.local, "parts", [])
        self.local.parts = None
        return "".join(parts)

    def write(self, text):
        parts = getattr(self.local, "parts", None)
        if parts is None:
            return len(text)
        room = self.limit - self.local.size
        if room > 0:
            chunk = text[:room]
            parts.append(chunk)
            self.local.size += len(chunk)
            if len(text) > room:
                parts.append("\n[stdout truncated]")
                self.local.size = self.limit
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def _load_candidate(path):
    with open(path, "r", encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "candidate", "__file__": "candidate.py"}
    exec(compile(source, "candidate.py", "exec"), namespace)
    forward = namespace.get("forward")
    if not callable(forward):
        raise RuntimeError("candidate defines no callable `forward(task)`")
    return forward


def _run_task(forward, capture, task_id, task):
    _rpc.current.task_id = task_id
    capture.begin()
    output, error, tb = None, None, None
    try:
        result = forward(task)
        output = result if isinstance(result, str) else str(result)
    except MemoryError:
        error, tb = "MemoryError", traceback.format_exc(limit=20)
    except BaseException as exc:  # the candidate may raise anything, SystemExit included
        error = f"{type(exc).__name__}: {exc}"[:2000]
        tb = traceback.format_exc(limit=20)
    finally:
        stdout = capture.end()
        _rpc.current.task_id = None
    _rpc.send({"type": "result", "task_id": task_id, "output": output,
               "error": error, "traceback": tb, "stdout": stdout})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpc-in", type=int, required=True)
    parser.add_argument("--rpc-out", type=int, required=True)
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--tasks-in-flight", type=int, default=4)
    parser.add_argument("--stdout-limit", type=int, default=4000)
    args = parser.parse_args()

    rpc_in = os.fdopen(args.rpc_in, "r", encoding="utf-8", buffering=1)
    _rpc.connect(os.fdopen(args.rpc_out, "w", encoding="utf-8", buffering=1))
    capture = _TaskLocalStdout(args.stdout_limit)
    sys.stdout = capture

    try:
        forward = _load_candidate(args.candidate)
    except BaseException as exc:
        _rpc.send({"type": "load_error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                   "traceback": traceback.format_exc(limit=20)})
        return 0
    _rpc.send({"type": "ready"})

    pool = ThreadPoolExecutor(max_workers=max(1, args.tasks_in_flight))
    for line in rpc_in:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        kind = msg.get("type")
        if kind == "task":
            pool.submit(_run_task, forward, capture, msg["task_id"], msg["task"])
        elif kind == "llm_result":
            _rpc.deliver(msg)
        elif kind == "shutdown":
            break
    _rpc.fail_pending("worker shutting down")
    pool.shutdown(wait=False, cancel_futures=True)
    _rpc.send({"type": "bye"})
    sys.stdout.flush()
    os._exit(0)  # do not wait for candidate threads that refuse to finish


if __name__ == "__main__":
    sys.exit(main())
