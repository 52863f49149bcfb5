"""The load tester against a deliberately faulty test server; the ONNX-only `latency` command."""
import asyncio
import socket
import threading

import numpy as np
import orjson
import pytest

from benchmarks.cli import main
from benchmarks.latency import LatencySettings, run_latency
from benchmarks.load import LoadError, LoadSettings, run_load
from tests.conftest import run_without_tensorflow
from core import data as datasets
from core.runtime import ProviderUnavailableError, usable_providers
from core.tasks import get_task

LABELS = get_task("fashion_mnist").labels


class FaultyServer:
    """/v1/classify/fashion_mnist over raw HTTP/1.1 keep-alive, answering from the dataset's
    labels, except: images whose label is 3 get a wrong label, label 4 gets HTTP 500, label 5
    gets a malformed body. It counts what it sent so the test can compare."""

    def __init__(self):
        ds = datasets.load("fashion_mnist", "test")
        self.truth = {x.tobytes(): int(y) for x, y in zip(ds.x, ds.y)}
        self.sent = {"ok": 0, "wrong": 0, "500": 0, "malformed": 0}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _answer(self, body: bytes) -> tuple[int, bytes]:
        pixels = np.asarray(orjson.loads(body)["pixels"], dtype=np.uint8)
        label = self.truth[pixels.tobytes()]
        if label == 3:
            self.sent["wrong"] += 1
            return 200, orjson.dumps({"top_k": [{"label": LABELS[(label + 1) % 10]}]})
        if label == 4:
            self.sent["500"] += 1
            return 500, b'{"error": "boom"}'
        if label == 5:
            self.sent["malformed"] += 1
            return 200, b'{"top_k": []}'
        self.sent["ok"] += 1
        return 200, orjson.dumps({"top_k": [{"label": LABELS[label], "probability": 0.9}]})

    async def _handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                status, body = self._answer(await reader.readexactly(length))
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_load_counts_errors_and_wrong_answers():
    with FaultyServer() as server:
        record = run_load(LoadSettings(url=f"http://127.0.0.1:{server.port}", task="fashion_mnist",
                                       concurrency=(1, 4), duration_s=0.4, warmup_s=0,
                                       examples=200), progress=lambda msg: None)
    levels = record["levels"]
    assert [lvl["concurrency"] for lvl in levels] == [1, 4]
    assert record["protocol"] == "v1" and record["reference"]["kind"] == "labels"
    # The probe request is the only one not counted in a level.
    sent = sum(server.sent.values()) - 1
    assert sum(lvl["requests"] for lvl in levels) == sent > 50
    assert sum(lvl["wrong_answers"] for lvl in levels) == server.sent["wrong"] > 0
    assert sum(lvl["error_kinds"].get("HTTP 500", 0) for lvl in levels) == server.sent["500"] > 0
    assert (sum(lvl["error_kinds"].get("malformed answer", 0) for lvl in levels)
            == server.sent["malformed"] > 0)
    assert all(lvl["requests_per_s"] > 0 and lvl["p99_ms"] >= lvl["p50_ms"] for lvl in levels)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_that_does_not_answer_is_a_clear_error(capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(LoadError, match="nothing answers at .*start the server"):
        run_load(LoadSettings(url=url, task="fashion_mnist", duration_s=0.1))
    assert main(["load", "--url", url, "--task", "fashion_mnist", "--duration", "0.1"]) == 2
    assert "error: nothing answers" in capsys.readouterr().err
    with pytest.raises(LoadError, match="expected http://HOST:PORT"):
        run_load(LoadSettings(url="https://example.com", task="fashion_mnist"))


def test_latency_command_on_cpu_records_numpy_and_bound_modes(tiny_artifacts, tmp_path):  # noqa: F811
    record = run_latency(str(tiny_artifacts), None,
                         LatencySettings(batch_sizes=(1, 8), budget_s=0.005, rounds=2,
                                         tasks=("fashion_mnist",)), progress=lambda msg: None)
    assert {r["variant"] for r in record["results"]} == {"fashion_mnist_tiny",
                                                         "fashion_mnist_tiny-prune-50"}
    for r in record["results"]:
        assert r["session_providers"][0] == "CPUExecutionProvider" and r["error"] is None
        assert {(m["mode"], m["batch_size"]) for m in r["measurements"]} == {
            ("numpy", 1), ("bound", 1), ("numpy", 8), ("bound", 8)}
    assert record["fastest"]["fashion_mnist/fashion_mnist_tiny"]["batch1"]["provider"] == \
        "CPUExecutionProvider"


@pytest.mark.skipif("CUDAExecutionProvider" in usable_providers(), reason="CUDA is usable here")
def test_latency_refuses_an_unusable_provider_before_measuring(tiny_artifacts):  # noqa: F811
    with pytest.raises(ProviderUnavailableError, match="usable: CPUExecutionProvider"):
        run_latency(str(tiny_artifacts), None, LatencySettings(providers=("cuda", "cpu")))


def test_latency_command_runs_without_tensorflow(tiny_artifacts, tmp_path):  # noqa: F811
    npz = datasets.SAMPLES_DIR / "sign_mnist.npz"
    r = run_without_tensorflow(f"""
        from benchmarks.cli import main
        raise SystemExit(main(['latency', '--artifacts', {str(tiny_artifacts)!r},
                               '--reports', {str(tmp_path)!r}, '--providers', 'cpu',
                               '--data', {str(npz)!r}, '--batch-sizes', '1,4',
                               '--budget-s', '0.005', '--rounds', '1']))
    """, also_blocked=("PIL", "matplotlib", "tqdm"))  # the GPU host has numpy + onnxruntime
    assert r.returncode == 0, r.stderr
    assert "sign_mnist_tiny" in r.stdout and "fashion_mnist" not in r.stdout
    assert (tmp_path / "latency.json").is_file()


def test_gpu_record_settings_and_refusal_on_a_host_without_gpu(tiny_artifacts, tmp_path,  # noqa: F811
                                                              capsys):
    from benchmarks.latency import GPU_BATCH_SIZES, gpu_settings

    all_gpus = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    s = gpu_settings(all_gpus, trt_cache=str(tmp_path / "trt"))
    assert s.providers == all_gpus and s.cuda_graph and s.batch_sizes == GPU_BATCH_SIZES
    assert s.batch_sizes[0] == 1 and s.batch_sizes[-1] == 1024
    assert s.variants == "float-and-selected"
    trt = s.provider_options()["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    cuda_only = gpu_settings(("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert cuda_only.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    if "CUDAExecutionProvider" in usable_providers():
        return
    with pytest.raises(ProviderUnavailableError, match="no GPU provider is usable.*shared/gpu"):
        gpu_settings(usable_providers())
    assert main(["gpu", "--artifacts", str(tiny_artifacts), "--reports", str(tmp_path)]) == 2
    assert "no GPU provider is usable on this machine" in capsys.readouterr().err


def test_float_and_selected_variants_with_accuracy_against_the_cpu(tiny_artifacts,  # noqa: F811
                                                                  tmp_path):
    import shutil

    from benchmarks.latency import compare_with_cpu
    from core.artifacts import select_variant

    root = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / "fashion_mnist", root / "fashion_mnist")
    settings = LatencySettings(batch_sizes=(1,), budget_s=0.005, rounds=1,
                               variants="float-and-selected")
    record = run_latency(str(root), None, settings, progress=lambda msg: None)
    assert {r["variant"] for r in record["results"]} == {"fashion_mnist_tiny"}  # nothing selected
    select_variant(root, "fashion_mnist", "fashion_mnist_tiny-prune-50")
    record = run_latency(str(root), None, settings, progress=lambda msg: None)
    assert {r["variant"] for r in record["results"]} == {"fashion_mnist_tiny",
                                                         "fashion_mnist_tiny-prune-50"}
    assert record["results"][0]["provider_options"] == {}
    rows = [{"task": "t", "variant": "v", "provider": "CPUExecutionProvider", "error": None,
             "accuracy": 0.90},
            {"task": "t", "variant": "v", "provider": "CUDAExecutionProvider", "error": None,
             "accuracy": 0.898},
            {"task": "t", "variant": "v", "provider": "TensorrtExecutionProvider", "error": None,
             "accuracy": 0.85}]
    compare_with_cpu(rows)
    assert rows[1]["accuracy_vs_cpu_pts"] == pytest.approx(-0.2) and rows[1]["accuracy_ok"]
    assert rows[2]["accuracy_ok"] is False and "accuracy_ok" not in rows[0]


def test_gpu_bundle_holds_what_the_gpu_run_reads(tiny_artifacts, tmp_path):  # noqa: F811
    """tools/gpu_bundle.py: float and selected variants (manifest, model.onnx, vocabulary) and
    the test data, enough for the latency path on the borrowed GPU machine."""
    import shutil

    from core.artifacts import select_variant
    from tools.gpu_bundle import bundle

    root = tmp_path / "artifacts"
    for task in ("fashion_mnist", "imdb"):
        shutil.copytree(tiny_artifacts / task, root / task)
    select_variant(root, "fashion_mnist", "fashion_mnist_tiny-prune-50")
    select_variant(root, "imdb", "imdb_tiny")
    copied, total = bundle(root, tmp_path / "bench")
    assert sorted(copied) == ["fashion_mnist/fashion_mnist_tiny",
                              "fashion_mnist/fashion_mnist_tiny-prune-50", "imdb/imdb_tiny"]
    assert sorted(p.name for p in (tmp_path / "bench" / "artifacts" / "imdb" / "imdb_tiny")
                  .iterdir()) == ["manifest.json", "model.onnx", "vocab.json"]
    assert 0 < total < 64 * 2 ** 20
    record = run_latency(str(tmp_path / "bench" / "artifacts"), str(tmp_path / "bench" / "data"),
                         LatencySettings(batch_sizes=(1,), budget_s=0.002, rounds=1,
                                         variants="float-and-selected"), progress=lambda m: None)
    assert {r["variant"] for r in record["results"]} == {"fashion_mnist_tiny",
                                                         "fashion_mnist_tiny-prune-50", "imdb_tiny"}
    assert not [r["error"] for r in record["results"] if r["error"]]
