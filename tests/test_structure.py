"""The structure rules of tools/check_structure.py hold for the project, and the check finds
each kind of violation when one is there."""
import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("check_structure",
                                               REPO / "tools" / "check_structure.py")
check_structure = importlib.util.module_from_spec(_spec)
sys.modules["check_structure"] = check_structure  # dataclasses look their module up there
_spec.loader.exec_module(check_structure)


def test_the_project_follows_its_structure_rules():
    r = subprocess.run([sys.executable, "tools/check_structure.py"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _tree(tmp_path, files: dict[str, str]):
    for pkg in check_structure.PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    return check_structure.project_files(tmp_path)


@pytest.mark.parametrize("importer, imported, allowed", [
    ("serve", "trainer", False), ("serve", "core", True), ("benchmarks", "compress", False),
    ("benchmarks", "trainer", False), ("compress", "trainer", True), ("trainer", "compress", False),
    ("core", "trainer", False), ("core", "serve", False), ("compress", "benchmarks", False),
])
def test_import_direction(tmp_path, importer, imported, allowed):
    modules = _tree(tmp_path, {f"{imported}/thing.py": "X = 1\n",
                               f"{importer}/user.py": f"def f():\n    from {imported} import thing\n"})
    found = check_structure.check_direction(modules)
    assert (found == []) == allowed, found


def test_a_cycle_between_files_is_found(tmp_path):
    modules = _tree(tmp_path, {"trainer/a.py": "from trainer import b\n",
                               "trainer/b.py": "def f():\n    from trainer.a import x\n"})
    cycles = check_structure.check_cycles(modules)
    assert len(cycles) == 1 and "trainer.a -> trainer.b -> trainer.a" in cycles[0].detail


def test_type_checking_imports_are_not_cycles(tmp_path):
    modules = _tree(tmp_path, {"trainer/a.py": "from trainer import b\n",
                               "trainer/b.py": "from typing import TYPE_CHECKING\n"
                                               "if TYPE_CHECKING:\n    from trainer.a import x\n"})
    assert check_structure.check_cycles(modules) == []


@pytest.mark.parametrize("code, raw", [
    ("v.manifest['labels']", True), ("manifest['input']['name']", True),
    ("v.manifest.get('runtime')", True), ("v.manifest.labels", False),
    ("v.manifest.preprocessing.get('type')", False),
])
def test_raw_manifest_access_outside_core(tmp_path, code, raw):
    modules = _tree(tmp_path, {"serve/m.py": f"def f(v, manifest):\n    return {code}\n",
                               "core/m.py": f"def f(v, manifest):\n    return {code}\n"})
    found = check_structure.check_manifest_access(modules)
    assert [v.path.endswith("serve/m.py") for v in found] == ([True] if raw else [])
