"""metaforge sandbox worker: runs ONE candidate over the tasks the host sends.

Why a separate process per candidate: candidate code is written by a model and is hostile
until proven otherwise. The host owns the process group, the deadline and the limits; this
file only loads the candidate, runs tasks on a thread pool (so llm() latency overlaps) and
speaks JSON lines on two dedicated pipes. The candidate's print() never reaches the
protocol: stdout is captured per task and truncated.

Start-up cost matters (one worker per evaluation): only json, os, sys and threading are
imported up front; argparse, concurrent.futures, traceback and re would add ~20 ms to every
evaluation (`python3 -X importtime`), so arguments are read by hand, the pool is a few
threads on a C queue, and traceback and re are imported only when needed.

Usage: python3 -I -S -B worker.py --rpc-in FD --rpc-out FD --candidate FILE
       --tasks-in-flight N --stdout-limit CHARS --output-limit CHARS [--max-threads N] [--threads-per-task N]
       --workdir DIR --scratch DIR [--read-root DIR ...] [--no-policy-hook]
"""
import json
import os
import sys
import threading
from _queue import SimpleQueue

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import metaforge  # noqa: E402  (the agent API: llm())
from metaforge import _policy, _rpc  # noqa: E402

# The interpreter builds its ~120 AST node types on the first compile() of any process.
# Done here, at import: once in the fork server for all its children (it was ~2.5 ms of
# every forked worker, most of it the policy hook seeing each type's attributes set), and
# before the hook in an exec'd worker.
compile("", "<ast types>", "exec")


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


def _is_adas(source):
    import re

    return re.search(r"^def\s+forward\s*\(\s*self\s*,", source, re.M) is not None


def _traceback():
    try:
        import traceback

        return traceback.format_exc(limit=20)
    except BaseException as exc:  # the candidate may have broken the import system
        return f"(traceback unavailable: {type(exc).__name__})"


def _load_candidate(path):
    with open(path, "r", encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "candidate", "__file__": "candidate.py"}
    adas = "self" in source and _is_adas(source)
    if adas:
        # ADAS agents use Info and LLMAgentBase as globals of their harness.
        from metaforge import adas as adas_api

        namespace.update({name: getattr(adas_api, name) for name in adas_api.__all__})
    exec(compile(source, "candidate.py", "exec"), namespace)
    forward = namespace.get("forward")
    if not callable(forward):
        # A memory design (candidate kind `memory`) is run over an episode sequence.
        from metaforge import episodes

        memory = episodes.memory_entry(namespace)
        if memory is not None:
            return memory
        raise RuntimeError("candidate defines no callable `forward(task)` (nor a `class Memory`)")
    if adas:
        adas_forward = forward
        return lambda task: adas_api.run_adas_forward(adas_forward, task)
    return forward


def _describe(exc):
    """"Type: message" of a candidate's exception, whose __str__ is the candidate's code too."""
    try:
        return f"{type(exc).__name__}: {exc}"[:2000]
    except BaseException:  # noqa: BLE001
        return f"{type(exc).__name__}: (its message could not be formatted)"


def _run_task(forward, capture, task_id, task, nonce):
    _rpc.current.task_id = task_id
    capture.begin()
    output, error, tb = None, None, None
    try:
        result = forward(task)
        output = result if isinstance(result, str) else str(result)
    except MemoryError:
        error, tb = "MemoryError", "MemoryError (no traceback: formatting it needs memory)"
    except BaseException as exc:  # the candidate may raise anything, SystemExit included
        error = _describe(exc)
        tb = _traceback()
    finally:
        if capture.overflowed() and not (error or "").startswith("OutputLimitExceeded"):
            error = f"OutputLimitExceeded: task printed more than {capture.hard_limit} characters"
        stdout = capture.end()
        _rpc.current.task_id = None
    try:
        _rpc.send({"type": "result", "task_id": task_id, "nonce": nonce, "output": output,
                   "error": error, "traceback": tb, "stdout": stdout})
    except BaseException:  # out of memory while reporting: the short form, which may fit
        _rpc.send({"type": "result", "task_id": task_id, "nonce": nonce, "output": None,
                   "error": "MemoryError: the worker ran out of memory reporting this task"})


_FLAGS = {"--rpc-in": int, "--rpc-out": int, "--candidate": str, "--tasks-in-flight": int,
          "--stdout-limit": int, "--output-limit": int, "--max-threads": int,
          "--threads-per-task": int, "--workdir": str,
          "--scratch": str}


class _Args:
    tasks_in_flight = 4
    stdout_limit = 4000
    output_limit = 1 << 20
    max_threads = 0
    threads_per_task = 0
    no_policy_hook = False

    def __init__(self):
        self.read_root = []


def _parse_args(argv):
    """The host's fixed command line (see Usage); anything else is a host bug, exit 2."""
    args = _Args()
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag == "--no-policy-hook":
            args.no_policy_hook = True
            i += 1
            continue
        if i + 1 >= len(argv) or (flag not in _FLAGS and flag != "--read-root"):
            sys.stderr.write(f"worker: bad argument {flag!r}\n")
            sys.exit(2)
        if flag == "--read-root":
            args.read_root.append(argv[i + 1])
        else:
            setattr(args, flag[2:].replace("-", "_"), _FLAGS[flag](argv[i + 1]))
        i += 2
    for required in ("rpc_in", "rpc_out", "candidate", "workdir", "scratch"):
        if not hasattr(args, required):
            sys.stderr.write(f"worker: --{required.replace('_', '-')} is required\n")
            sys.exit(2)
    return args


def _start_pool(size):
    """`size` daemon threads running queued calls; os._exit ends them with the process."""
    jobs = SimpleQueue()

    def serve():
        while True:
            fn, fn_args = jobs.get()
            try:
                fn(*fn_args)
            except BaseException:  # noqa: BLE001  (a pool thread outlives any one task)
                pass

    for _ in range(max(1, size)):
        threading.Thread(target=serve, daemon=True).start()
    return jobs


def main(argv=None):
    """Runs the worker; `argv` is given by the fork server (`zygote.py`), else sys.argv."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)

    rpc_in = os.fdopen(args.rpc_in, "r", encoding="utf-8", buffering=1)
    _rpc.connect(os.fdopen(args.rpc_out, "w", encoding="utf-8", buffering=1))
    capture = _TaskLocalStdout(args.stdout_limit, args.output_limit)
    sys.stdout = capture
    if not args.no_policy_hook:
        _policy.install(args.read_root, args.workdir, args.scratch)

    _rpc.inherit_task_in_threads(args.max_threads, args.threads_per_task)
    try:
        forward = _load_candidate(args.candidate)
    except BaseException as exc:
        _rpc.send({"type": "load_error", "error": _describe(exc),
                   "traceback": _traceback()})
        return 0
    _rpc.send({"type": "ready"})

    jobs = _start_pool(args.tasks_in_flight)
    for line in rpc_in:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        kind = msg.get("type")
        if kind == "task":
            jobs.put((_run_task, (forward, capture, msg["task_id"], msg["task"], msg.get("nonce"))))
        elif kind in ("llm_result", "episode_result"):
            _rpc.deliver(msg)
        elif kind == "shutdown":
            break
    _rpc.fail_pending("worker shutting down")
    _rpc.send({"type": "bye"})
    sys.stdout.flush()
    os._exit(0)  # do not wait for candidate threads that refuse to finish


if __name__ == "__main__":
    sys.exit(main())
