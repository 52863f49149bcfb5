"""Optuna on a real PostgreSQL: the test starts a throwaway server (initdb + pg_ctl on a free
loopback port, as the `postgres` user when run as root, since postgres refuses root), and two
`python -m trainer search` processes share one study through `--storage postgresql://...`.
Skipped, with the reason, where the PostgreSQL server programs are not installed."""
import csv
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO
from trainer.distribute import free_ports
from trainer.search import SearchError, open_storage

TRIALS = 4


def _server_program(name: str) -> str | None:
    # Debian keeps the server programs out of PATH, under /usr/lib/postgresql/<version>/bin.
    return shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _server_program("initdb"), _server_program("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) are not installed: "
                    "apt-get install -y postgresql")
    as_user, owner = [], None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        if not shutil.which("runuser"):
            pytest.skip("running as root and runuser (util-linux) is missing to drop to 'postgres'")
        as_user = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="tinyship-pg-"))
    if owner:
        os.chown(home, owner.pw_uid, owner.pw_gid)
    port = free_ports(1)[0]
    data = home / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "tinyship",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(home / "server.log"), "-w",
                    "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://tinyship@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def _search(url: str, out: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", "search", "--model", "fashion_mlp", "--sampler",
         "random", "--trials", str(TRIALS), "--params", "learning_rate", "dropout",
         "--storage", url, "--study", "shared", "--out", str(out), "--seed", str(seed),
         "--epochs", "1", "--max-train-examples", "300", "--early-stopping-patience", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_search_processes_share_one_study(postgres_url, tmp_path):
    procs = [_search(postgres_url, tmp_path / f"search{i}", seed=i) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    # Each stops once the study holds TRIALS; the other's trial in flight may add one.
    assert TRIALS <= len(finished) <= TRIALS + 1, [t.state for t in study.trials]
    ran = {t.user_attrs["worker"] for t in finished}
    assert ran == {f"{os.uname().nodename}:{p.pid}" for p in procs}, (ran, outputs)
    # Both processes wrote the whole study, with who ran each trial.
    for i in range(2):
        rows = list(csv.DictReader(open(tmp_path / f"search{i}" / "results.csv")))
        assert sorted(int(r["trial"]) for r in rows) == sorted(t.number for t in study.trials)
        assert {r["worker"] for r in rows} == ran
    per_worker = {w: sum(t.user_attrs["worker"] == w for t in finished) for w in ran}
    print(f"study 'shared' on PostgreSQL: {len(finished)} trials, per process {per_worker}")


def test_an_unreachable_server_is_named_without_its_password():
    port = free_ports(1)[0]
    with pytest.raises(SearchError, match=rf"cannot open the Optuna storage "
                                          rf"postgresql://me:\*\*\*@127.0.0.1:{port}/db"):
        open_storage(f"postgresql://me:secret@127.0.0.1:{port}/db")


def test_a_storage_that_is_no_url_is_named():
    with pytest.raises(SearchError, match="'search.db' is not a database URL"):
        open_storage("search.db")
