"""`--strategy multiworker` for real: two trainer processes on this machine form one
MultiWorkerMirroredStrategy cluster over loopback ports (TF_CONFIG), train one epoch together,
and only the chief (worker 0) keeps an artifact. Plus TF_CONFIG's error messages."""
import json

import pytest

from core.artifacts import load_variant
from tests.conftest import REPO, run_without_tensorflow
from trainer.distribute import (ClusterConfigError, WorkerRole, local_tf_config, run_local_workers,
                                worker_role)

OVERRIDES = {"epochs": 1, "early_stopping_patience": 0}


def _flags(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def test_two_workers_train_one_model_and_only_the_chief_writes_it(tmp_path, monkeypatch):
    artifacts, logs, scratch = tmp_path / "artifacts", tmp_path / "logs", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the non-chief's throwaway copy goes
    monkeypatch.chdir(REPO)
    codes = run_local_workers(["train", "--model", "fashion_mlp", "--artifacts", str(artifacts),
                               *_flags(OVERRIDES)], workers=2, log_dir=logs, timeout=240)
    outputs = [(logs / f"worker-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], outputs

    assert [p.name for p in (artifacts / "fashion_mnist").iterdir()] == ["fashion_mlp"]
    v = load_variant(artifacts / "fashion_mnist" / "fashion_mlp")  # verifies checksums
    distribute = v.manifest.extra["distribute"]
    assert distribute == {"strategy": "CollectiveAllReduceStrategy", "replicas": 2, "workers": 2,
                          "task": "worker:0", "chief": True}
    assert "not kept (worker:1 is not the chief)" in outputs[1]
    assert not list(scratch.glob("tinyship-worker-*")), "the non-chief left its copy behind"

    # The kept model is the trained one: loaded again, it scores what the manifest reports,
    # well above chance (10 classes) after one synchronous epoch.
    from trainer.fit import evaluate, prepare_data
    from trainer.train import resolved_recipe
    from core.tf_setup import keras

    model = keras.models.load_model(v.path / "model.keras")
    data = prepare_data("fashion_mnist", resolved_recipe("fashion_mlp", overrides=OVERRIDES))
    metrics, _ = evaluate(model, data.x_test, data.y_test)
    assert metrics["test_accuracy"] == pytest.approx(v.manifest.metrics["test_accuracy"], abs=1e-6)
    assert metrics["test_accuracy"] > 0.5
    print(f"two-worker fashion_mlp, 1 epoch: test accuracy {metrics['test_accuracy']:.4f}")


@pytest.mark.parametrize("tf_config, expected", [
    ("not json", "TF_CONFIG is not JSON"),
    (json.dumps({"cluster": ["a:1"]}), "needs a 'cluster' object"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}),
     "task type 'ps' has no address list"),
    (json.dumps(local_tf_config(["a:1", "b:2"], 2)), "task index 2 is not in 0..1"),
])
def test_bad_tf_config_is_named(tf_config, expected):
    with pytest.raises(ClusterConfigError, match=expected):
        worker_role({"TF_CONFIG": tf_config})


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0}, True),
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 1}, False),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
])
def test_chief_follows_tf_convention(cluster, task, chief):
    role = worker_role({"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})})
    assert role.is_chief is chief and role.workers == sum(map(len, cluster.values()))


def test_without_tf_config_a_process_is_its_own_chief():
    assert worker_role({}) == WorkerRole() and WorkerRole().is_chief


def test_launcher_rejects_bad_requests_and_needs_no_tensorflow():
    result = run_without_tensorflow("""
        from trainer.distribute import main
        assert main(['--workers', '0', '--', 'train', '--model', 'fashion_mlp']) == 2
        assert main(['--workers', '2']) == 2
    """)
    assert result.returncode == 0, result.stderr
    assert "--workers must be at least 1, got 0" in result.stderr
    assert "no trainer command given" in result.stderr
