"""metaforge's bridge to a Ray cluster (runs in Ray's own venv; src/executor/ray.rs).

The driver writes one JSON line per shard on stdin: {"submit": {"id", "spec"}}. Each shard
becomes a Ray task that runs `metaforge shard` on a node with the spec on stdin; the task's
stdout (the worker's result) comes back here and goes to the driver as {"id", "ok"}, or
{"id", "error"} when Ray gave up. Ray reruns a task whose worker process or node died
(max_retries); a shard that ran and failed is not rerun (retry_exceptions=False), since a
rerun would fail the same way.

stdout carries only this protocol: Ray's own output is sent to stderr (the driver's log).
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading

PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


def emit(msg):
    with EMIT_LOCK:
        PROTOCOL.write(json.dumps(msg) + "\n")
        PROTOCOL.flush()


EMIT_LOCK = threading.Lock()


def node_binary(path, digest, blob_refs):
    """The metaforge binary on this node: the configured path, or the driver's own binary
    fetched from the object store once per node and cached under its content hash (only the
    newest is kept)."""
    if digest is None:
        return path
    import ray

    folder = os.path.join(tempfile.gettempdir(), "metaforge-ray-bin")
    target = os.path.join(folder, digest[:24] + "-metaforge")
    if not os.path.exists(target):
        os.makedirs(folder, exist_ok=True)
        data = ray.get(blob_refs[0])
        fd, staging = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(staging, 0o755)
        os.replace(staging, target)
        # Earlier builds' copies are a few hundred MB each; a running shard keeps its own
        # (an unlinked executable runs on), and a driver that still needs one fetches it again.
        for name in os.listdir(folder):
            if name.endswith("-metaforge") and name != os.path.basename(target):
                try:
                    os.remove(os.path.join(folder, name))
                except OSError:
                    pass
    return target


NODE = {}


def shard_env():
    """The environment of `metaforge shard`: the node's Python 3 resolved once per Ray worker
    and passed as METAFORGE_PYTHON, since a version manager's `python3` shim costs ~200 ms a
    call and every shard is a new process."""
    if "env" not in NODE:
        env = dict(os.environ)
        if "METAFORGE_PYTHON" not in env:
            probe = subprocess.run(
                ["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
            )
            if probe.returncode == 0 and probe.stdout.strip():
                env["METAFORGE_PYTHON"] = probe.stdout.strip()
        NODE["env"] = env
    return NODE["env"]


def missing_cpu_flags(required, cpuinfo="/proc/cpuinfo"):
    """The instructions in `required` (as /proc/cpuinfo names them) this node's CPU lacks."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in required if flag not in have]
    except OSError:
        pass
    return []  # no cpuinfo to read (not Linux): nothing to say in advance


def run_shard(spec, path, digest, blob_refs, cpu_flags=()):
    missing = missing_cpu_flags(cpu_flags) if digest is not None else []
    if missing:
        raise RuntimeError(
            f"node {os.uname().nodename} lacks CPU instructions the driver's binary was built for "
            f"({', '.join(missing)}: it was built with a target-cpu); fix: build a binary for the "
            "nodes with scripts/build-node-binary.sh, install it on them and set "
            "executor.node_binary to its path")
    binary = node_binary(path, digest, blob_refs)
    proc = subprocess.run([binary, "shard"], input=spec.encode(), capture_output=True, env=shard_env())
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"`metaforge shard` exited with {proc.returncode} on {os.uname().nodename}: {err}")
    return proc.stdout.decode()


def reachable(address):
    """Why the head at `address` cannot be reached, or None: ray.init would retry forever."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
        return None
    except (OSError, ValueError) as e:
        return f"nothing answers at {address} ({e})"


def main():
    settings = json.loads(sys.argv[1])
    address = settings["address"]
    kwargs = dict(logging_level="ERROR", log_to_driver=False)
    if address.split(":")[0] in ("127.0.0.1", "localhost"):
        # A loopback head is a one-machine cluster: without this Ray swaps 127.0.0.1 for the
        # machine's routable address, where that head does not listen.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        kwargs["_node_ip_address"] = "127.0.0.1"
    why = None if address == "auto" else reachable(address)
    if why:
        emit({"fatal": why})
        return 1
    try:
        import ray

        ray.init(address=address, **kwargs)
        binary = settings["binary"]
        if binary["ship"]:
            with open(binary["path"], "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            blob_refs = [ray.put(data)]
            del data
        else:
            digest, blob_refs = None, []
        task = ray.remote(
            num_cpus=settings["cpus_per_shard"],
            max_retries=settings["max_retries"],
            retry_exceptions=False,
        )(run_shard)
        resources = ray.cluster_resources()
    except Exception as e:  # noqa: BLE001 - everything here is a reason the run cannot start
        emit({"fatal": f"{type(e).__name__}: {e}"})
        return 1
    emit(
        {
            "node_ip": ray.util.get_node_ip_address(),
            "cpus": resources.get("CPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "ray": ray.__version__,
        }
    )

    pending = {}
    cond = threading.Condition()
    done = threading.Event()

    def read_requests():
        for line in sys.stdin:
            try:
                msg = json.loads(line)["submit"]
                ref = task.remote(msg["spec"], binary["path"], digest, blob_refs,
                                  binary.get("cpu_flags", []))
            except Exception as e:  # noqa: BLE001
                emit({"id": msg.get("id") if isinstance(msg, dict) else None, "error": f"cannot submit: {e}"})
                continue
            with cond:
                pending[ref] = msg["id"]
                cond.notify()
        done.set()
        with cond:
            cond.notify()

    threading.Thread(target=read_requests, daemon=True).start()
    while True:
        with cond:
            while not pending and not done.is_set():
                cond.wait()
            if not pending and done.is_set():
                break
            refs = list(pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        for ref in ready:
            with cond:
                shard = pending.pop(ref)
            try:
                emit({"id": shard, "ok": ray.get(ref)})
            except Exception as e:  # noqa: BLE001 - Ray's errors name the cause
                emit({"id": shard, "error": f"{type(e).__name__}: {e}"})
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
