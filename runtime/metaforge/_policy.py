"""Names what a candidate tried, before the kernel refuses it.

This audit hook (PEP 578) is the LABEL, not the lock: a determined candidate can get past
Python-level hooks, and that is fine, because the worker also runs inside network/user/mount
namespaces, a landlock ruleset and a seccomp filter set up by the host. What the hook adds is
a precise, typed reason ("socket to ('127.0.0.1', 8080)") that the host stores with the
evaluation and the proposer reads, instead of a bare PermissionError.

Installed once, after the worker's own imports and before the candidate is loaded; audit
hooks cannot be removed.
"""
import os
import sys
import threading

from metaforge import _rpc


class PolicyDenied(PermissionError):
    """An operation the sandbox does not allow."""


# Audit events that are always refused, with the words used to name them.
_ALWAYS_DENIED = {
    "os.system": "running a shell command (os.system)",
    "os.exec": "executing a program (os.exec*)",
    "os.posix_spawn": "spawning a process (os.posix_spawn)",
    "os.spawn": "spawning a process (os.spawn*)",
    "os.fork": "forking a process",
    "os.forkpty": "forking a process",
    "subprocess.Popen": "starting a subprocess",
    "os.kill": "sending a signal to a process",
    "os.killpg": "sending a signal to a process group",
    "signal.pthread_kill": "sending a signal to a thread",
    "socket.connect": "network connection",
    "socket.bind": "binding a socket",
    "socket.sendto": "sending a datagram",
    "socket.sendmsg": "sending a datagram",
    "socket.getaddrinfo": "DNS lookup",
    "socket.gethostbyname": "DNS lookup",
    "socket.gethostbyaddr": "DNS lookup",
    "socket.getnameinfo": "DNS lookup",
    "ctypes.dlopen": "loading a native library (ctypes)",
    "ctypes.dlsym": "calling native code (ctypes)",
    "ctypes.cdata": "raw memory access (ctypes)",
    "ctypes.call_function": "calling native code (ctypes)",
    "resource.setrlimit": "changing a resource limit",
    "resource.prlimit": "changing a resource limit",
    "pickle.find_class": "unpickling a class or function",
    "sys.remote_exec": "remote code execution",
}

# Modules whose import alone hands out native code or memory.
_DENIED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_cffi_backend"}

_PATH_EVENTS_READ = {"os.listdir", "os.scandir"}
_PATH_EVENTS_WRITE = {
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
    "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree",
}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_busy = threading.local()


def _under(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def install(read_roots, workdir, scratch):
    """Installs the hook. `read_roots` and `workdir` may be read; only `scratch` written."""
    readable = [os.path.realpath(p) for p in list(read_roots) + [workdir]]
    writable = [os.path.realpath(scratch)]

    def deny(what):
        _rpc.send({"type": "denied", "task_id": getattr(_rpc.current, "task_id", None),
                   "what": what})
        raise PolicyDenied(what)

    def check_path(path, write, verb):
        if isinstance(path, int) or path is None:
            return  # an already open descriptor: the kernel checked it when it was opened
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        allowed = _under(real, writable) if write else _under(real, readable + writable)
        if not allowed:
            deny(f"{verb} {real}")

    # Every audit event in the process comes through here (type attribute writes, compile,
    # exec, ...), so the first test is one set lookup that dismisses the uninteresting.
    watched = frozenset(_ALWAYS_DENIED) | {"open", "import", "socket.__new__"} \
        | _PATH_EVENTS_READ | _PATH_EVENTS_WRITE

    def hook(event, args):
        if event not in watched or getattr(_busy, "on", False):
            return
        what = _ALWAYS_DENIED.get(event)
        _busy.on = True
        try:
            if what is not None:
                if event in ("socket.connect", "socket.bind", "socket.sendto") and len(args) > 1:
                    what = f"{what} to {args[1]!r}"
                elif event == "socket.getaddrinfo" and args:
                    what = f"{what} of {args[0]!r}"
                deny(what)
            elif event == "open":
                path, mode, flags = (list(args) + [None, None, None])[:3]
                write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                        (isinstance(flags, int) and flags & _WRITE_FLAGS != 0)
                check_path(path, write, "writing" if write else "reading")
            elif event == "import":
                name = str(args[0]).split(".")[0]
                if name in _DENIED_IMPORTS:
                    deny(f"importing {name}")
            elif event == "socket.__new__":
                family = args[1] if len(args) > 1 else None
                if family not in (None, -1, 1):  # 1 = AF_UNIX
                    deny(f"creating a network socket (family {family})")
            elif event in _PATH_EVENTS_READ:
                check_path(args[0] if args else ".", False, "listing")
            else:
                check_path(args[0] if args else None, True, event)
        finally:
            _busy.on = False

    sys.addaudithook(hook)
