"""The ONNX serving and benchmark paths must run where TensorFlow is not installed."""
from tests.conftest import run_without_tensorflow

# Modules that must import (and work) with TensorFlow absent. Add new TF-free modules here.
TF_FREE_MODULES = [
    "core", "core.tasks", "core.data", "core.preprocessing", "core.artifacts", "core.manifest",
    "core.runtime", "core.runners", "core.measure", "core.modelstats", "core.evaluate",
    "core.export",
    "trainer", "trainer.models", "trainer.recipe", "trainer.plan", "trainer.cli",
    "compress", "serve", "benchmarks",
    "compress.cli", "compress.recipe", "compress.techniques", "compress.pipeline",
    "benchmarks.latency", "benchmarks.load",
    "benchmarks.check", "benchmarks.cli", "benchmarks.report", "benchmarks.suite",
    "benchmarks.environment",
    "serve.app", "serve.cli", "serve.dataplane", "serve.model", "serve.batching",
    "serve.triton_export", "serve.fixtures",
]
def test_blocker_really_blocks():
    r = run_without_tensorflow("import tensorflow")
    assert r.returncode != 0 and "blocked for the test" in r.stderr


def test_tf_free_modules_import_without_tensorflow():
    r = run_without_tensorflow("\n".join(f"import {m}" for m in TF_FREE_MODULES))
    assert r.returncode == 0, r.stderr


def test_data_and_preprocessing_work_without_tensorflow():
    r = run_without_tensorflow("""
        from core import data
        from core.preprocessing import ImagePreprocessor
        ds = data.load('fashion_mnist', 'test')
        print(ImagePreprocessor()(ds.x[:4]).shape)
    """)
    assert r.returncode == 0, r.stderr
    assert "(4, 28, 28, 1)" in r.stdout

