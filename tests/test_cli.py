"""What every command line shares: ARTIFACTS_DIR is the artifact root wherever --artifacts is
not given (each subcommand that takes --artifacts, of every package)."""
import argparse
import importlib
from pathlib import Path

import pytest

CLIS = ["trainer.cli", "compress.cli", "benchmarks.cli", "serve.cli"]


def _subparsers(parser: argparse.ArgumentParser):
    yield "", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub


@pytest.mark.parametrize("module", CLIS)
def test_artifacts_dir_is_the_default_root_of_every_command(module, monkeypatch, tmp_path):
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path))
    parser = importlib.import_module(module).build_parser()
    checked = []
    for name, sub in _subparsers(parser):
        for action in sub._actions:
            # None means "not used unless given" (benchmarks load/check); SUPPRESS defers to
            # the parent parser (serve's subcommand).
            if action.dest == "artifacts" and action.default not in (None, argparse.SUPPRESS):
                assert Path(action.default) == tmp_path, f"{module} {name}: {action.default}"
                checked.append(name)
    if module == "serve.cli":
        from serve.settings import Settings

        assert Settings.from_env().artifacts == tmp_path
        checked.append("serve")
    assert checked, f"{module} has no command with an artifact root"
