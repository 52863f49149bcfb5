"""Scale-out: the recipe's `strategy` names a tf.distribute strategy. Models are built and
compiled inside its scope, so the same training code runs on one device, several GPUs
(mirrored) or several hosts (multiworker, configured by the TF_CONFIG environment variable)."""
from __future__ import annotations

import json
import os

from core.tf_setup import tf


# recipe.strategy -> the tf.distribute strategy. "multiworker": each host runs the same command
# with its own TF_CONFIG ({"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker",
# "index": i}}); without TF_CONFIG it is a single local worker.
STRATEGIES = {
    "default": tf.distribute.get_strategy,
    "mirrored": tf.distribute.MirroredStrategy,
    "multiworker": tf.distribute.MultiWorkerMirroredStrategy,
}


def make_strategy(name: str):
    return STRATEGIES.get(name, tf.distribute.get_strategy)()


def describe_strategy(strategy) -> dict:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "workers": len(cluster.get("worker", [])) or 1}
