"""TextWorldExpress game server for metaforge's episodic domain (`twc`).

Why a separate, trusted process: TextWorldExpress runs its games in a JVM that py4j starts
as a subprocess and talks to over a loopback socket, neither of which the candidate sandbox
allows (no fork, no network). Nor does it need them: the environment and the base agent are
fixed parts of the experiment, not candidate code. The host (src/episodic/env.rs) starts a
few of these servers in the project's own virtual environment, plays episodes through them,
and reads the reward from them, so a memory design only ever sees the observations and
trajectories the host hands it and cannot touch the game or its score.

Protocol: one JSON object per line on stdin, one reply per line on the stdout this process
started with (the package's own prints go to stderr).
  {"op": "reset", "game": "twc", "fold": "train", "seed": 3, "params": "numLocations=1,..."}
  {"op": "step", "action": "take copybook"}
Each reply: {"observation", "task", "inventory", "valid_actions", "score", "done", "success"}
or {"error": "..."}. The first line written is {"ready": true, "version": "..."}.
"""
import json
import os
import sys


def _state(obs, infos, task):
    return {
        "observation": obs.strip(),
        "task": task,
        "inventory": infos.get("inventory", "").strip(),
        "valid_actions": sorted(infos.get("validActions", [])),
        "score": float(infos.get("score", 0.0)),
        "done": bool(infos.get("done", False)),
        "success": bool(infos.get("tasksuccess", False)),
    }


def main():
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr  # the package and the JVM may print; the protocol stays clean
    from textworld_express import TextWorldExpressEnv
    from importlib.metadata import version

    step_limit = int(os.environ.get("METAFORGE_TWX_STEP_LIMIT", "100"))
    env = TextWorldExpressEnv(envStepLimit=step_limit)
    out.write(json.dumps({"ready": True, "version": version("textworld_express")}) + "\n")
    task = ""
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "reset":
                obs, infos = env.reset(seed=int(msg["seed"]), gameFold=msg.get("fold", "train"),
                                       gameName=msg.get("game", "twc"), gameParams=msg.get("params", ""),
                                       generateGoldPath=False)
                task = infos.get("taskDescription", "")
                reply = _state(obs, infos, task)
            elif op == "step":
                obs, _reward, _done, infos = env.step(str(msg["action"]))
                reply = _state(obs, infos, task)
            elif op == "close":
                break
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report, keep serving: one bad request must not end the pool
            reply = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        out.write(json.dumps(reply) + "\n")
    env.close()


if __name__ == "__main__":
    main()
