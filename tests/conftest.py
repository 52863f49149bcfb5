"""Shared test fixtures.

Full-data tests use FULL_DATA_DIR (set by .ci/run to ../shared/data when present) and are
skipped with a visible reason otherwise (`-ra` lists every skip in the summary).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
