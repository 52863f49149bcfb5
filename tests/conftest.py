"""Shared test fixtures.

Full-data tests use FULL_DATA_DIR (set by .ci/run to ../shared/data when present) and are
skipped with a visible reason otherwise (`-ra` lists every skip in the summary).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Decoded image folders (core.userdata) go to a cache of this session, shared with the
# command lines the tests start, not to the user's ~/.cache/tinyship.
os.environ.setdefault("TINYSHIP_CACHE", tempfile.mkdtemp(prefix="tinyship-test-cache-"))
# Packages that the TensorFlow-free paths must never import (see `run_without_tensorflow`).
BLOCKED = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx")
def _blocker(blocked: tuple[str, ...]) -> str:
    return textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {blocked!r}:
                    raise ImportError('blocked for the test: ' + name)
        sys.meta_path.insert(0, Block())
    """)


def run_without_tensorflow(code: str, also_blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which importing TensorFlow (or Keras, TFMOT,
    tf2onnx, and `also_blocked`) fails, as on a host that has only numpy and onnxruntime."""
    return subprocess.run([sys.executable, "-c", _blocker(BLOCKED + tuple(also_blocked))
                           + textwrap.dedent(code)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _builtin_registries():
    from core import data, tasks

    return (tasks.TASKS, dict(tasks.TASKS)), (data.DATASETS, dict(data.DATASETS))


_BUILTIN = _builtin_registries()


def loaded_model(client, task: str, timeout_s: float = 30.0) -> dict:
    """`/v1/models`' entry for `task` once it is no longer loading (a TestClient of serve)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        if models[task]["state"] != "loading" or time.monotonic() > deadline:
            return models[task]
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _registries_restored():
    """After each test, the process-wide task and dataset tables hold the built-in rows only:
    users' tasks registered by a test (core.userdata.register) or by a module's fixture are
    gone, and the commands that need them register them again from their artifact root."""
    yield
    for table, builtin in _BUILTIN:
        table.clear()
        table.update(builtin)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """An artifact root with tiny untrained-but-real models of the three served tasks
    (tests/tiny_models.py), built once per session."""
    from tests.tiny_models import build_tiny_artifacts

    root = tmp_path_factory.mktemp("artifacts")
    build_tiny_artifacts(root)
    return root


def _full_data_dir() -> Path | None:
    env = os.environ.get("FULL_DATA_DIR")
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "data"
    return shared if shared.is_dir() else None


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    d = _full_data_dir()
    if d is None or not d.is_dir():
        pytest.skip("full datasets not available: set FULL_DATA_DIR or provide ../shared/data")
    return d


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch):
    # A developer's DATA_DIR must not change what the tests load.
    monkeypatch.delenv("DATA_DIR", raising=False)
