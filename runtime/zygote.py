"""metaforge fork server: one pre-started interpreter that forks a fresh worker per evaluation.

Why: starting a Python interpreter and importing the worker costs ~35 ms of CPU per
evaluation, most of a whole search's orchestration time with a fast model
(`benches/RESULTS.md`). This process pays that once; each evaluation is a fork of it.

Isolation is NOT shared between evaluations: every child applies, for itself, the same
layers the host applies between fork and exec for an exec'd worker (`src/sandbox/
isolation.rs`): its own user, network and mount namespaces with its own tmpfs scratch, the
landlock ruleset the host prepared for this evaluation alone (sent as a descriptor), the
seccomp filter, rlimits, its own process group, a death signal, and no descriptor but its
two pipes and its stderr file. Landlock's signal scope keeps a child from signalling this
process or its siblings; seccomp keeps it from forking or tracing them.

This process itself runs only this file: it never loads candidate code, holds no secret,
and must stay single-threaded (unshare(CLONE_NEWUSER) refuses multi-threaded callers).

Protocol (SOCK_SEQPACKET on fd 3, one JSON message per packet):
  host -> here  {"type": "hello", "seccomp": [hex, ...], "sys": {name: number}}
                {"type": "spawn", "id": N, "argv": [...] | null, "env": {...}, "cwd": DIR,
                 "rlimits": [[resource, soft, hard], ...], "namespaces": {...} | null,
                 "landlock": {"scratch_access": BITS | null} | null, "seccomp": bool}
                 with descriptors [rpc_in, rpc_out, stderr(, landlock ruleset)]
                {"type": "kill", "pid": P, "report": bool}  (SIGKILL to a worker and its group,
                 if not yet reaped; with "report": false, answered "killed" at once and its
                 exit not reported: the host has every result and does not wait for it)
  here -> host  {"type": "spawned", "id": N, "pid": P} | {"type": "failed", "id": N, "error": E}
                {"type": "exited", "pid": P, "status": RAW_WAIT_STATUS}
                {"type": "killed", "pid": P}  (an unreported kill's signal is sent)
A spawn with "argv": null applies the layers and exits 0 (the host's probe).
"""
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker  # noqa: E402  (imported here once, so each child starts with it loaded)
import metaforge.adas  # noqa: E402,F401  (and what a worker imports when it needs it:
import metaforge.episodes  # noqa: E402,F401  the ADAS harness, memory designs, `re` for
import re  # noqa: E402,F401  answer keys, `traceback` for the first task that raises,
import traceback  # noqa: E402,F401  ~10 ms each time otherwise)

CONTROL_FD = 3
SETUP_FAILED = 70  # exit code of a child that could not apply its sandbox layers

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
# Looked up here, once, rather than in every child (and frozen with the rest, below).
for _name in ("unshare", "mount", "prctl", "syscall"):
    getattr(_libc, _name)


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


# Made here, not in each child: a ctypes type made in a child would outlive its setup (ctypes
# caches array types) where the candidate's gc.get_objects() finds it; these are frozen.
_CapDataPair = _CapData * 2


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _syscall(nr, *args):
    return _libc.syscall(ctypes.c_long(nr), *args)


class _Config:
    seccomp = []  # (buffer, prog) pairs, kept alive for the life of the process
    sys = {}
    maps = None  # (uid_map, gid_map) of the latest spawn with namespaces: the next spare's


def _hello(msg):
    for hexed in msg["seccomp"]:
        raw = bytes.fromhex(hexed)
        buf = ctypes.create_string_buffer(raw, len(raw))
        prog = _SockFprog(len(raw) // 8, ctypes.cast(buf, ctypes.c_void_p))
        _Config.seccomp.append((buf, prog))
    _Config.sys = msg["sys"]


def _write_proc(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _maps_of(msg):
    ns = msg.get("namespaces")
    return (ns["uid_map"], ns["gid_map"]) if ns else None


def _unshare(maps):
    """New user, network and mount namespaces, the user mapped, mounts private: what does
    not depend on the request, so a spare does it while it waits (~1 ms of kernel work,
    most of it building the network namespace, off the spawn's path)."""
    _check(_libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS)), "unshare")
    _write_proc("/proc/self/setgroups", "deny")
    _write_proc("/proc/self/uid_map", maps[0])
    _write_proc("/proc/self/gid_map", maps[1])
    _check(_libc.mount(b"none", b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None), "mount --make-rprivate /")


def _enter_namespaces(ns, unshared):
    """New user, network and mount namespaces (unless `unshared` already); a private tmpfs
    on the scratch folder; every capability the new user namespace gave dropped."""
    if not unshared:
        _unshare((ns["uid_map"], ns["gid_map"]))
    scratch = ns["scratch"].encode()
    _check(_libc.mount(b"tmpfs", scratch, b"tmpfs", ctypes.c_ulong(_MS_NOSUID | _MS_NODEV),
                       ns["tmpfs_options"].encode()), "mount tmpfs")
    os.chdir(scratch)
    # The new user namespace gave this process every capability in it (no exec follows to
    # drop them, as it would for an exec'd worker): drop them all.
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    _check(_syscall(_Config.sys["capset"], ctypes.byref(header), ctypes.byref(data)), "capset")


def _restrict_landlock(ll, ruleset_fd, scratch):
    access = ll.get("scratch_access")
    if access is not None:
        # The tmpfs root exists only now, in this child: add its read-write rule here.
        dir_fd = os.open(scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        rule = _PathBeneath(access, dir_fd)
        rc = _syscall(_Config.sys["landlock_add_rule"], ctypes.c_int(ruleset_fd),
                      ctypes.c_uint(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint(0))
        os.close(dir_fd)
        _check(rc, "landlock_add_rule")
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "no_new_privs")
    _check(_syscall(_Config.sys["landlock_restrict_self"], ctypes.c_int(ruleset_fd), ctypes.c_uint(0)),
           "landlock_restrict_self")
    os.close(ruleset_fd)


def _apply_seccomp():
    if not _Config.seccomp:
        raise OSError("seccomp was asked for but the host sent no filter")
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "no_new_privs")
    for _, prog in _Config.seccomp:
        _check(_syscall(_Config.sys["seccomp"], ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
                        ctypes.c_uint(0), ctypes.byref(prog)), "seccomp")


def _child(msg, fds, zygote_pid, detached=False, unshared=False):
    """Runs in the forked child; never returns. `detached`, `unshared`: a spare did that
    much before the request came."""
    try:
        if not detached:  # a spare did it when it was forked
            _detach(zygote_pid)
        # Descriptors: the pipes on 3 and 4, stderr on 2, /dev/null on 0 and 1, the landlock
        # ruleset on 5 until used; nothing else (the control socket above all).
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(high[2], 2)
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)
        ruleset = None
        if len(high) > 3:
            os.dup2(high[3], 5)
            ruleset = 5
        os.closerange(6 if ruleset else 5, 1 << 16)
        for res, soft, hard in msg["rlimits"]:
            resource.setrlimit(res, (soft, hard))
        if msg.get("namespaces"):
            _enter_namespaces(msg["namespaces"], unshared)
        if msg.get("landlock") is not None:
            _restrict_landlock(msg["landlock"], ruleset, msg["cwd"])
        if msg.get("seccomp"):
            _apply_seccomp()
        os.chdir(msg["cwd"])
    except BaseException as exc:  # noqa: BLE001  (any failure here must end this child)
        try:
            os.write(2, f"metaforge fork server: sandbox setup failed: {exc}\n".encode())
        finally:
            os._exit(SETUP_FAILED)
    if msg.get("argv") is None:
        os._exit(0)
    # This server's environment is the host's cleared one (plus Python's own LC_CTYPE
    # coercion, as in an exec'd worker); the host names the rest.
    os.environ.update(msg["env"])
    _forget_native_access()
    sys.argv = ["worker.py", *msg["argv"]]
    code = 1
    try:
        code = worker.main(msg["argv"]) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        code = 1
    os._exit(code)


def _forget_native_access():
    """Drops every handle on ctypes this server holds, before the candidate loads: ctypes
    left in sys.modules would let `import ctypes` skip the policy hook's import check, and
    this server's libc function objects could be called with no audit event at all (Python
    audits their lookup, not their calls). What remains of them is unreachable: freed, or
    frozen by gc.freeze(), which hides objects from gc.get_objects()."""
    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]
    _Config.seccomp = []
    vars(_libc).clear()  # its looked-up functions
    g = globals()
    for name in ("ctypes", "_libc", "_PathBeneath", "_SockFprog", "_CapHeader", "_CapData", "_CapDataPair"):
        g.pop(name, None)


def _send(ctl, msg):
    ctl.send(json.dumps(msg).encode())


def _kill(ctl, pid, assigned, report):
    """The host's kill of a worker and its group, done here: this process reaps its
    children, so until it has, `pid` (and the group of that id) is still that worker's.
    Unreported: its exit is reaped silently, and the host is answered before the signal is
    sent (just before: woken by it, the worker would take this CPU for its whole teardown,
    ~1-5 ms, and the answer with it); any exit report of it was sent before the answer."""
    alive = pid in assigned  # else already reaped: the number may be someone else's now
    if not report:
        assigned.discard(pid)
        _send(ctl, {"type": "killed", "pid": pid})
    if alive:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _reap(ctl, assigned):
    """Reports the exits of workers the host knows; a spare that died idle is forgotten."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in assigned:
            assigned.discard(pid)
            _send(ctl, {"type": "exited", "pid": pid, "status": status})
        elif pid == _Spare.pid:
            # Died idle: if entering its namespaces is what failed, the next spare must not
            # try again (or spares would be forked and die in a loop); the next request
            # with namespaces lets one more try.
            if _Spare.maps is not None:
                _Config.maps = None
            _Spare.sock.close()
            _Spare.pid = _Spare.sock = _Spare.maps = None


class _Spare:
    """The next worker, forked ahead of its request and warmed up (`_spare`), so a spawn
    costs handing it the request instead of a fork plus a cold child's first steps."""
    pid = None
    sock = None
    maps = None  # the user maps of the namespaces it is already in, or None


# What a spare compiles and runs once while it waits: the first compile and the first JSON
# round trip of a freshly forked child take ~1.5 ms more than later ones (its own heap pages,
# copied or zero-filled on first touch).
_WARM_UP = """
from metaforge import llm, majority
import json
def forward(task):
    answers = [f"Answer: {i}" for i in range(3)]
    return majority(answers) + json.dumps({"q": task.get("question", "")})
"""


def _fork(zygote_pid):
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child already did, or already exited
    return pid


# How long after a spawn the next spare waits while a worker runs. Why wait at all: on a
# machine with few cores the spare's fork and warm-up took the CPU from the worker just
# handed its request (its set-up, ~4 ms), and delayed the host's next steps.
SPARE_DELAY_S = 0.02


def _spare_due(assigned, last_spawn):
    """Seconds until the next spare should be forked (0: now). At once when no worker runs
    (the host is between evaluations: its own loop leaves a core free); else once the
    latest worker has had time to set itself up."""
    if not assigned:
        return 0.0
    return max(0.0, last_spawn + SPARE_DELAY_S - time.monotonic())


def _fork_spare(zygote_pid):
    server_end, spare_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    maps = _Config.maps
    pid = _fork(zygote_pid)
    if pid == 0:
        _spare(spare_end, zygote_pid, maps)
    spare_end.close()
    _Spare.pid, _Spare.sock, _Spare.maps = pid, server_end, maps


def _drop_spare():
    """A spare that cannot serve the request (in namespaces it was not asked for) ends."""
    pid, sock = _Spare.pid, _Spare.sock
    _Spare.pid = _Spare.sock = _Spare.maps = None
    sock.close()  # it reads the end of its socket and exits; the kill makes sure
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _detach(zygote_pid):
    """First steps of every child: die with the server, leave its signal plumbing, own
    process group."""
    _libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != zygote_pid:
        os._exit(SETUP_FAILED)  # the server died between fork and prctl
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setpgid(0, 0)


def _spare(sock, zygote_pid, maps):
    """Runs in a spare child: enters its namespaces (with `maps`, those of the latest
    request), warms up, waits for its request, then becomes that worker. It holds nothing
    but its socket to the server while it waits; the other layers depend on the request
    (and unshare refuses a process with threads, so none start)."""
    try:
        _detach(zygote_pid)
        keep = sock.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
        if maps is not None:
            _unshare(maps)
        namespace = {"__name__": "candidate"}
        exec(compile(_WARM_UP, "candidate.py", "exec"), namespace)
        json.loads(json.dumps({"type": "result", "output": namespace["forward"]({"question": "x"})}))
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 8)
        if not data:
            os._exit(0)  # the server is done with this spare
        msg = json.loads(data)
        sock.close()
    except BaseException:  # noqa: BLE001  (a spare that cannot serve simply ends)
        os._exit(SETUP_FAILED)
    _child(msg, fds, zygote_pid, detached=True, unshared=maps is not None)


def _spawn(ctl, msg, fds, zygote_pid, assigned):
    maps = _maps_of(msg)
    if maps is not None:
        _Config.maps = maps
    if _Spare.pid is not None and _Spare.maps is not None and _Spare.maps != maps:
        _drop_spare()
    if _Spare.pid is not None:
        # The spare is this worker from here on. The host hears so before the spare gets its
        # request: woken, the spare would take this CPU and delay the answer by its whole
        # set-up (seen: 4-5 ms on one spawn in four). Should it have died meanwhile (killed
        # from outside), `_reap` reports that as this worker's exit.
        pid, sock = _Spare.pid, _Spare.sock
        _Spare.pid = _Spare.sock = _Spare.maps = None
        assigned.add(pid)
        _send(ctl, {"type": "spawned", "id": msg.get("id"), "pid": pid})
        try:
            socket.send_fds(sock, [json.dumps(msg).encode()], fds)
        except OSError:
            pass
        sock.close()
        return
    pid = _fork(zygote_pid)
    if pid == 0:
        _child(msg, fds, zygote_pid)
    assigned.add(pid)
    _send(ctl, {"type": "spawned", "id": msg.get("id"), "pid": pid})


def main():
    ctl = socket.socket(fileno=CONTROL_FD)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(ctl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    gc.collect()
    gc.freeze()  # children share these pages instead of copying them when gc walks them
    zygote_pid = os.getpid()
    assigned = set()
    last_spawn = 0.0
    wait_ms = None
    while True:
        for fd, _ in poller.poll(wait_ms):
            if fd == wake_r:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                continue
            data, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 8)
            if not data:
                return 0  # the host is gone
            msg = {}
            try:
                msg = json.loads(data)
                if msg.get("type") == "hello":
                    _hello(msg)
                    gc.freeze()  # the filters' ctypes objects too, out of gc.get_objects()
                elif msg.get("type") == "spawn":
                    _spawn(ctl, msg, fds, zygote_pid, assigned)
                    last_spawn = time.monotonic()
                elif msg.get("type") == "kill":
                    _kill(ctl, msg["pid"], assigned, msg.get("report", True))
            except Exception as exc:  # noqa: BLE001  (a bad request must not end the server)
                _send(ctl, {"type": "failed", "id": msg.get("id"), "error": f"{type(exc).__name__}: {exc}"})
            finally:
                for fd in fds:
                    os.close(fd)
        _reap(ctl, assigned)
        wait_ms = None
        if _Spare.pid is None and _Config.sys:  # after the hello: a spare needs its filters
            due = _spare_due(assigned, last_spawn)
            if due == 0.0:
                _fork_spare(zygote_pid)
            else:
                wait_ms = due * 1000 + 1


if __name__ == "__main__":
    sys.exit(main())
