"""The candidate `metaforge doctor` runs: it tries what a hostile candidate would and says
what happened to each attempt. Every attempt must fail for the sandbox to be working."""


def _attempt(name, fn):
    try:
        fn()
        return f"{name}: ALLOWED"
    except BaseException as exc:  # noqa: BLE001 - we report whatever stopped it
        return f"{name}: refused ({type(exc).__name__}: {exc})"


def _connect():
    import socket
    socket.create_connection(("127.0.0.1", 9), timeout=1)


def _read_secret():
    with open("/etc/shadow" if __import__("os").path.exists("/etc/shadow") else "/etc/passwd") as f:
        f.read()


def _fork():
    import os
    os.fork()


def _write_outside():
    with open("/tmp/metaforge-doctor-escape", "w") as f:
        f.write("x")


def forward(task):
    return "\n".join([
        _attempt("network connection to 127.0.0.1", _connect),
        _attempt("reading a system secret", _read_secret),
        _attempt("starting a process", _fork),
        _attempt("writing outside the scratch folder", _write_outside),
    ])
