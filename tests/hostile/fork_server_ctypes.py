# expect: ok
"""Looks for ctypes objects left by the fork server it was forked from (its globals, the
garbage collector, every thread's frames) to call libc without importing ctypes, which the
policy hook refuses. A worker must hold none: finding one raises, and the case fails."""
import gc
import sys


def _native(value):
    if isinstance(value, type(sys)):
        return value.__name__.split(".")[0] in ("ctypes", "_ctypes")
    return any(c.__module__ in ("ctypes", "_ctypes") for c in type(value).__mro__)


def forward(task):
    found = []
    server = sys.modules.get("__main__")
    for name, value in list(vars(server).items()):
        if _native(value):
            found.append(f"__main__.{name}")
    for value in gc.get_objects():
        if _native(value):
            found.append(f"gc: {type(value).__name__}")
            break
    for frame in list(sys._current_frames().values()):
        while frame is not None:
            if frame.f_code is not forward.__code__:  # this frame holds only the search
                for name, value in list(frame.f_locals.items()):
                    if _native(value):
                        found.append(f"frame {frame.f_code.co_name}: {name}")
            frame = frame.f_back
    if found:
        raise RuntimeError(f"reached native code through {found[:5]}")
    return "no ctypes object to reach"
