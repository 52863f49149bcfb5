"""Scale-out: the recipe's `strategy` names a tf.distribute strategy. Models are built and
compiled inside its scope, so the same training code runs on one device, several GPUs
(mirrored) or several hosts (multiworker, configured by the TF_CONFIG environment variable).

Multi-worker training: every worker runs the same `python -m trainer train ... --strategy
multiworker` command with its own TF_CONFIG. Only the chief (worker 0) writes the artifact; the
other workers save into a temporary folder they remove, because saving a model whose variables
are distributed takes part in the workers' collective operations. On one machine

    python -m trainer.distribute --workers 2 -- train --model fashion_mlp --epochs 1

starts the workers with loopback ports (`make train-multiworker` runs that command).
This module imports TensorFlow only when a strategy is built, so the launcher stays light.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import TrainerInputError

# recipe.strategy -> the tf.distribute strategy, built from the tf module. "multiworker": each
# host runs the same command with its own TF_CONFIG ({"cluster": {"worker": ["host1:port", ...]},
# "task": {"type": "worker", "index": i}}); without TF_CONFIG it is a single local worker.
STRATEGIES = {
    "default": lambda tf: tf.distribute.get_strategy(),
    "mirrored": lambda tf: tf.distribute.MirroredStrategy(),
    "multiworker": lambda tf: tf.distribute.MultiWorkerMirroredStrategy(),
}


class ClusterConfigError(TrainerInputError):
    """TF_CONFIG does not describe a cluster this process can join."""


@dataclass(frozen=True)
class WorkerRole:
    """Where this process stands in the cluster TF_CONFIG describes (one local worker without)."""
    task_type: str = "worker"
    index: int = 0
    workers: int = 1
    _has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        # TF's convention: an explicit "chief" task, else worker 0 is the chief.
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0
                                              and not self._has_chief)

    def to_dict(self) -> dict:
        return {"task": f"{self.task_type}:{self.index}", "chief": self.is_chief}


def worker_role(environ=None) -> WorkerRole:
    """Parse TF_CONFIG with errors that name what is wrong (TF's own are obscure)."""
    text = (environ if environ is not None else os.environ).get("TF_CONFIG", "").strip()
    if not text:
        return WorkerRole()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterConfigError(f"TF_CONFIG is not JSON ({e}); expected e.g. "
                                 f"{json.dumps(local_tf_config(['127.0.0.1:12345'], 0))}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterConfigError("TF_CONFIG needs a 'cluster' object ({'worker': ['host:port', "
                                 "...]}) and a 'task' object ({'type': 'worker', 'index': i})")
    task_type, index = task.get("type"), task.get("index")
    members = cluster.get(task_type)
    if not isinstance(members, list) or not members:
        raise ClusterConfigError(f"TF_CONFIG task type {task_type!r} has no address list in "
                                 f"cluster (cluster has {sorted(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise ClusterConfigError(f"TF_CONFIG task index {index!r} is not in 0..{len(members) - 1} "
                                 f"(cluster.{task_type} has {len(members)} addresses)")
    workers = sum(len(cluster.get(t, [])) for t in ("chief", "worker"))
    return WorkerRole(task_type, index, workers, _has_chief=bool(cluster.get("chief")))


def make_strategy(name: str):
    from core.tf_setup import tf

    if name not in STRATEGIES:
        raise TrainerInputError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "multiworker":
        worker_role()  # a malformed TF_CONFIG fails here with a readable message
    return STRATEGIES[name](tf)


def describe_strategy(strategy) -> dict:
    return {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "workers": worker_role().workers, **worker_role().to_dict()}


# ---------------------------------------------------------------- local cluster launcher

def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports free right now (all held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_tf_config(addresses: list[str], index: int) -> dict:
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def run_local_workers(trainer_args: list[str], workers: int = 2, *, log_dir=None,
                      timeout: float | None = None, host: str = "127.0.0.1") -> list[int]:
    """Run `python -m trainer <trainer_args> --strategy multiworker` as `workers` processes of one
    cluster on this machine; return their exit codes (worker 0 first). With log_dir each
    worker's output goes to worker-<i>.log there. On timeout every worker is killed."""
    if workers < 1:
        raise ClusterConfigError(f"--workers must be at least 1, got {workers}")
    if not trainer_args:
        raise ClusterConfigError("no trainer command given, e.g. train --model fashion_mlp")
    addresses = [f"{host}:{p}" for p in free_ports(workers, host)]
    command = [sys.executable, "-m", "trainer", *trainer_args, "--strategy", "multiworker"]
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    try:
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": json.dumps(local_tf_config(addresses, i))}
            out = open(Path(log_dir) / f"worker-{i}.log", "w") if log_dir is not None else None
            logs.append(out)
            procs.append(subprocess.Popen(command, env=env, stdout=out,
                                          stderr=subprocess.STDOUT if out else None,
                                          start_new_session=True))
        deadline = None if timeout is None else time.monotonic() + timeout
        codes = []
        for p in procs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            codes.append(p.wait(timeout=left))
        return codes
    finally:
        # A worker left alone waits for its peers forever: take every remaining one down.
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for out in logs:
            if out:
                out.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.distribute",
        description="Run a trainer command as several multi-worker processes on this machine "
                    "(TF_CONFIG with loopback ports; worker 0 is the chief and writes the "
                    "artifact).",
        epilog="example: python -m trainer.distribute --workers 2 -- train --model fashion_mlp "
               "--epochs 1")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--log-dir", help="write each worker's output to worker-<i>.log there "
                                     "(default: this terminal)")
    p.add_argument("--timeout", type=float, help="seconds before every worker is killed")
    p.add_argument("trainer_args", nargs=argparse.REMAINDER,
                   help="the trainer command after --, e.g. -- train --model fashion_mlp")
    args = p.parse_args(argv)
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    try:
        codes = run_local_workers(trainer_args, args.workers, log_dir=args.log_dir,
                                  timeout=args.timeout)
    except ClusterConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print(f"error: the workers did not finish within {args.timeout:g} s; all were stopped",
              file=sys.stderr)
        return 124
    print(f"[distribute] {args.workers} workers finished with exit codes {codes}", flush=True)
    return max(codes, key=abs) if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
