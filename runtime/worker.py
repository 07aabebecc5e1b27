"""metaforge sandbox worker: runs ONE candidate over the tasks the host sends.

Why a separate process per candidate: candidate code is written by a model and is hostile
until proven otherwise. The host owns the process group, the deadline and the limits; this
file only loads the candidate, runs tasks on a thread pool (so llm() latency overlaps) and
speaks JSON lines on two dedicated pipes. The candidate's print() never reaches the
protocol: stdout is captured per task and truncated.

Usage: python3 -I -S -B worker.py --rpc-in FD --rpc-out FD --candidate FILE
       --tasks-in-flight N --stdout-limit CHARS --output-limit CHARS
       --workdir DIR --scratch DIR [--read-root DIR ...] [--no-policy-hook]
"""
import argparse
import json
import os
import re
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import metaforge  # noqa: E402  (the agent API: llm())
from metaforge import _policy, _rpc  # noqa: E402


class OutputLimitExceeded(RuntimeError):
    """A task printed more than the output limit."""


class _TaskLocalStdout:
    """Routes print() of each task thread into that task's bounded buffer."""

    def __init__(self, limit, hard_limit):
        self.limit = limit
        self.hard_limit = hard_limit
        self.local = threading.local()

    def begin(self):
        self.local.parts = []
        self.local.size = 0
        self.local.written = 0

    def end(self):
        parts = getattr(self.local, "parts", [])
        self.local.parts = None
        return "".join(parts)

    def overflowed(self):
        return getattr(self.local, "written", 0) > self.hard_limit

    def write(self, text):
        parts = getattr(self.local, "parts", None)
        if parts is None:
            return len(text)
        self.local.written += len(text)
        if self.local.written > self.hard_limit:
            raise OutputLimitExceeded(f"task printed more than {self.hard_limit} characters")
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
    adas = re.search(r"^def\s+forward\s*\(\s*self\s*,", source, re.M) is not None
    if adas:
        # ADAS agents use Info and LLMAgentBase as globals of their harness.
        from metaforge import adas as adas_api

        namespace.update({name: getattr(adas_api, name) for name in adas_api.__all__})
    exec(compile(source, "candidate.py", "exec"), namespace)
    forward = namespace.get("forward")
    if not callable(forward):
        raise RuntimeError("candidate defines no callable `forward(task)`")
    if adas:
        adas_forward = forward
        return lambda task: adas_api.run_adas_forward(adas_forward, task)
    return forward


def _run_task(forward, capture, task_id, task, nonce):
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
        if capture.overflowed() and not (error or "").startswith("OutputLimitExceeded"):
            error = f"OutputLimitExceeded: task printed more than {capture.hard_limit} characters"
        stdout = capture.end()
        _rpc.current.task_id = None
    _rpc.send({"type": "result", "task_id": task_id, "nonce": nonce, "output": output,
               "error": error, "traceback": tb, "stdout": stdout})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpc-in", type=int, required=True)
    parser.add_argument("--rpc-out", type=int, required=True)
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--tasks-in-flight", type=int, default=4)
    parser.add_argument("--stdout-limit", type=int, default=4000)
    parser.add_argument("--output-limit", type=int, default=1 << 20)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--read-root", action="append", default=[])
    parser.add_argument("--no-policy-hook", action="store_true")
    args = parser.parse_args()

    rpc_in = os.fdopen(args.rpc_in, "r", encoding="utf-8", buffering=1)
    _rpc.connect(os.fdopen(args.rpc_out, "w", encoding="utf-8", buffering=1))
    capture = _TaskLocalStdout(args.stdout_limit, args.output_limit)
    sys.stdout = capture
    if not args.no_policy_hook:
        _policy.install(args.read_root, args.workdir, args.scratch)

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
            pool.submit(_run_task, forward, capture, msg["task_id"], msg["task"], msg.get("nonce"))
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
