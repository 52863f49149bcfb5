"""Metrics under --workers N: every scrape shows every worker's requests (serve.metrics).

Before, each worker process kept its own counters and a scrape showed whichever worker the
kernel gave the connection to, so totals jumped between scrapes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from serve.fixtures import write_fixture_artifacts
from serve.metrics import ServerMetrics, SharedMetrics
from tests.conftest import REPO
from tests.test_serve_live import free_port, stop, wait_ready

CLASSIFY = 'tinyship_requests_total{model="imdb",route="/v1/classify/{task}",status="200"}'


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_shared_metrics_sum_counters_of_all_workers_and_gauges_of_live_ones(tmp_path):
    a, b = ServerMetrics(SharedMetrics(tmp_path)), ServerMetrics(SharedMetrics(tmp_path))
    for _ in range(3):
        a.observe_request("imdb", "/v1/classify/{task}", 200, 0.001)
    b.observe_request("imdb", "/v1/classify/{task}", 200, 0.3)
    a.in_flight, b.in_flight = 2, 5
    b.shared.write(b.snapshot())
    # A worker that is gone: its requests happened, its in-flight gauge is no longer true.
    gone = ServerMetrics(SharedMetrics(tmp_path))
    gone.observe_request("imdb", "/v1/classify/{task}", 200, 0.001)
    gone.in_flight = 100
    snap = gone.snapshot()
    gone.shared.write({**snap, "pid": _dead_pid()})

    text = a.render().decode()
    assert _value(text, CLASSIFY) == 5
    assert _value(text, "tinyship_requests_in_flight") == 7
    bucket = ('tinyship_request_duration_seconds_bucket{le="0.5",model="imdb",'
              'route="/v1/classify/{task}"}')
    assert _value(text, bucket) == 5
    assert _value(text, 'tinyship_request_duration_seconds_bucket{le="0.002",model="imdb",'
                        'route="/v1/classify/{task}"}') == 4
    assert b.render().decode().count(CLASSIFY) == 1 and _value(b.render().decode(), CLASSIFY) == 5


def test_without_a_shared_folder_a_process_reports_its_own_numbers():
    m = ServerMetrics()
    m.observe_request("imdb", "/v1/classify/{task}", 200, 0.001)
    assert _value(m.render().decode(), CLASSIFY) == 1


@pytest.mark.parametrize("workers", [2])
def test_two_workers_answer_scrapes_with_the_same_totals(tmp_path, workers):
    artifacts = write_fixture_artifacts(tmp_path / "artifacts")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--port", str(port), "--artifacts",
                             str(artifacts), "--providers", "cpu", "--workers", str(workers),
                             "--threads", "1", "--grpc-port", "0", "--log-level", "warning"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        pids = set()
        deadline = time.monotonic() + 60
        sent = 0
        # New connections spread over the workers; go on until both have answered and
        # loaded their models (each answers from its own process).
        while len(pids) < workers or sent < 20:
            assert time.monotonic() < deadline, f"answers came from {pids} only"
            req = urllib.request.Request(url + "/v1/classify/imdb", data=b'{"text": "good"}',
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    sent += 1
                    pids.add(r.headers["X-Request-ID"].split("-")[0])
            except urllib.error.HTTPError as e:
                assert e.code == 503, e.read()  # that worker is still loading its models
                time.sleep(0.05)
        time.sleep(1.5)  # every worker has written its snapshot since
        totals = set()
        for _ in range(8):
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                totals.add(_value(r.read().decode(), CLASSIFY))
        assert totals == {sent}, (totals, sent)
    finally:
        stop(proc)
    assert not re.search(r'"level": ?"error"', proc.stderr.read())
