"""serve as users run it: a real uvicorn server, the official Triton client, the CLI,
graceful shutdown, the Triton repository export and the demo page in headless Chromium."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import uvicorn

from serve.app import create_app
from serve.fixtures import USER_LABELS, USER_TASK, write_fixture_artifacts
from serve.settings import Settings
from tests.conftest import REPO
from core.artifacts import selected_variant
from core.runtime import variant_session
from core.tasks import FASHION_LABELS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def serving(app, config=uvicorn.Config, **options):
    """`app` on uvicorn in a thread, as `python -m serve` runs it (uvloop, httptools), until the
    block ends; yields its port. `config`: uvicorn's Config or serve's ServeConfig."""
    port = free_port()
    server = uvicorn.Server(config(app, host="127.0.0.1", port=port, log_level="warning",
                                   access_log=False, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return write_fixture_artifacts(tmp_path_factory.mktemp("serve-live"), user_task=True)


@pytest.fixture(scope="module")
def server(artifacts):
    """uvicorn in a thread, as `python -m serve` runs it (uvloop, httptools)."""
    with serving(create_app(Settings(artifacts=artifacts, providers=("cpu",), threads=1))) as port:
        yield f"http://127.0.0.1:{port}"


def test_tritonclient_metadata_and_inference_json_and_binary(server, artifacts):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fashion_mnist")
    meta = client.get_model_metadata("fashion_mnist")
    assert meta["inputs"][0]["shape"] == [-1, 28, 28, 1]
    output_name = meta["outputs"][0]["name"]

    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (3, 28, 28))
    variant = selected_variant(artifacts, "fashion_mnist")
    x = variant.preprocessor()(raw)
    expected = variant_session(variant, providers=("cpu",)).run(
        None, {"input": x})[0]
    for binary in (False, True):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput(output_name, binary_data=binary)
        result = client.infer("fashion_mnist", [inp], outputs=[out], request_id="r1")
        np.testing.assert_allclose(result.as_numpy(output_name), expected, atol=1e-5)
    # No outputs named: the client asks for binary outputs of every tensor.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("fashion_mnist", [inp]).as_numpy(output_name),
                               expected, atol=1e-5)
    ids = np.zeros((2, 64), np.int32)
    inp = httpclient.InferInput("input", [2, 64], "INT32")
    inp.set_data_from_numpy(ids)
    assert client.infer("imdb", [inp]).as_numpy("prob").shape == (2, 1)
    client.close()


def test_export_triton_writes_a_repository_triton_can_parse(artifacts, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "model_repository"
    r = subprocess.run([sys.executable, "-m", "serve", "export-triton", "--out", str(out),
                        "--artifacts", str(artifacts)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for task, dtype, dims, width in (("fashion_mnist", "TYPE_FP32", [28, 28, 1], 10),
                                     ("sign_mnist", "TYPE_FP32", [28, 28, 1], 24),
                                     ("imdb", "TYPE_INT32", [64], 1)):
        config = text_format.Parse((out / task / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.name == task and config.platform == "onnxruntime_onnx"
        # serve's per-request row limit: a request serve accepts, Triton accepts.
        assert config.max_batch_size == Settings().max_request_rows
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert model_config_pb2.DataType.Name(config.input[0].data_type) == dtype
        assert list(config.input[0].dims) == dims and list(config.output[0].dims) == [width]
        variant = selected_variant(artifacts, task)
        assert (out / task / "1" / "model.onnx").read_bytes() == variant.file("model.onnx").read_bytes()
        # One label per output column: imdb's one sigmoid column is p(positive).
        assert (out / task / "labels.txt").read_text().splitlines() == (
            variant.labels if width > 1 else variant.labels[1:])
    kserve = (out / "kserve-inferenceservice.yaml").read_text()
    assert "kind: InferenceService" in kserve and "name: triton" in kserve


def test_triton_config_carries_the_variants_runtime_settings():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from serve.triton_config import model_config
    from serve.triton_export import config_pbtxt

    from core.manifest import InputSpec, Lineage, Manifest, OutputSpec

    manifest = Manifest(
        task="fashion_mnist", model="cnn", variant="cnn-int8", lineage=Lineage(None, "train"),
        input=InputSpec("input", "float32", (None, 28, 28, 1), "image"),
        output=OutputSpec("probs", 3, "softmax"), preprocessing={"type": "image"},
        labels=tuple("abc"),
        runtime={"onnxruntime": {"disabled_optimizers": ["QDQPropagationTransformer"]}})
    text = config_pbtxt(model_config(manifest, Settings(), name="fashion_mnist"), manifest.variant)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == "fashion_mnist" and list(config.output[0].dims) == [3]
    # Under ONNX Runtime's own session option key (semicolon-separated, as ORT reads it).
    assert config.parameters["optimization.disable_specified_optimizers"].string_value == \
        "QDQPropagationTransformer"


def test_cli_serves_and_shuts_down_gracefully(artifacts):
    port = free_port()
    env = {**os.environ, "SERVE_MAX_BATCH_SIZE": "8"}
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--port", str(port), "--artifacts",
                             str(artifacts), "--providers", "cpu", "--access-log", "true"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        req = urllib.request.Request(url + "/v1/classify/imdb", data=b'{"text": "good film"}',
                                     headers={"Content-Type": "application/json",
                                              "X-Request-ID": "abc-123"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["X-Request-ID"] == "abc-123"
            assert json.loads(r.read())["top_k"][0]["label"] in ("positive", "negative")
        # A request in flight when SIGTERM arrives is finished: send its headers and half of
        # its body, signal, then send the rest and read a complete 200 answer.
        body = b'{"texts": ["a good film", "a bad film"]}'
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"POST /v1/classify/imdb HTTP/1.1\r\nHost: test\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            conn.sendall(body[10:])
            answer = b""
            while not answer.endswith(b"}"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        assert len(json.loads(payload)["results"]) == 2
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert any(r.get("request_id") == "abc-123" and r.get("status") == 200 for r in logs)
    messages = [r["msg"] for r in logs]
    assert any("queued requests answered" in m for m in messages)
    assert any("Finished server process" in m for m in messages), messages


def test_cli_rejects_bad_settings(artifacts):
    r = subprocess.run([sys.executable, "-m", "serve", "--max-batch-size", "zero"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "max_batch_size" in r.stderr


NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                   "(apt-get install -y chromium; .ci/run installs it)")


@contextlib.contextmanager
def chromium_page(url: str, tmp_path):
    """Headless Chromium on `url`, driven over the DevTools protocol: yields
    (evaluate(js) -> value, wait_for(js, timeout) -> first truthy value)."""
    from websockets.sync.client import connect

    profile = tmp_path / "chromium-profile"
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        page = None
        while page is None:
            with urllib.request.urlopen(devtools + "/json/list", timeout=5) as r:
                page = next((t for t in json.loads(r.read()) if t["type"] == "page"), None)
            assert time.monotonic() < deadline, "no page target"
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 10**6))

            def evaluate(expression: str):
                call_id = next(calls)
                ws.send(json.dumps({"id": call_id, "method": "Runtime.evaluate",
                                    "params": {"expression": expression, "awaitPromise": True,
                                               "returnByValue": True}}))
                while True:
                    msg = json.loads(ws.recv(timeout=30))
                    if msg.get("id") == call_id:
                        return msg["result"]["result"].get("value")

            def wait_for(expression: str, timeout: float = 30):
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    value = evaluate(expression)
                    if value:
                        return value
                    time.sleep(0.1)
                raise TimeoutError(expression)

            yield evaluate, wait_for
    finally:
        stop(browser, 10)


@NEEDS_CHROMIUM
def test_demo_page_in_headless_chromium(server, tmp_path):
    with chromium_page(server + "/", tmp_path) as (evaluate, wait_for):
        wait_for("document.readyState === 'complete' && !!document.getElementById('classify')")
        # A review: pick the task, type, click, read the answer from the page.
        evaluate("""(() => { const t = document.getElementById('task'); t.value = 'imdb';
                   t.dispatchEvent(new Event('change'));
                   document.getElementById('text').value = 'A wonderful, moving film.';
                   document.getElementById('classify').click(); })()""")
        answer = wait_for("Array.from(document.querySelectorAll('#results li'))"
                          ".map(li => li.textContent).join('|')")
        labels = [item.split(" ")[0] for item in answer.split("|")]
        assert sorted(labels) == ["negative", "positive"], answer
        # A drawing: pointer strokes on the canvas, then classify.
        evaluate("""(() => { const t = document.getElementById('task');
                   t.value = 'fashion_mnist'; t.dispatchEvent(new Event('change'));
                   const c = document.getElementById('canvas'), r = c.getBoundingClientRect();
                   const ev = (type, x, y) => c.dispatchEvent(new PointerEvent(type,
                       {clientX: r.left + x, clientY: r.top + y, bubbles: true}));
                   ev('pointerdown', 60, 60);
                   for (let i = 0; i <= 20; i++) ev('pointermove', 60 + 8 * i, 60 + 8 * i);
                   window.dispatchEvent(new PointerEvent('pointerup'));
                   document.getElementById('classify').click(); })()""")
        answer = wait_for("Array.from(document.querySelectorAll('#results li'))"
                          ".map(li => li.textContent).join('|')")
        top = answer.split("|")
        assert len(top) == 3 and all(any(item.startswith(lbl + " ") for lbl in FASHION_LABELS)
                                     for item in top), answer
        assert "variant fixture_mlp" in evaluate("document.getElementById('status').textContent")
        # An imported task (20x24 colour input) is listed from /v1/models and classifies
        # the drawing at its own size and channel count.
        wait_for(f"!!document.querySelector('#task option[value={USER_TASK}]')")
        evaluate(f"""(() => {{ const t = document.getElementById('task');
                   t.value = '{USER_TASK}'; t.dispatchEvent(new Event('change'));
                   document.getElementById('results').innerHTML = '';
                   document.getElementById('classify').click(); }})()""")
        answer = wait_for("Array.from(document.querySelectorAll('#results li'))"
                          ".map(li => li.textContent).join('|')")
        assert sorted(item.split(" ")[0] for item in answer.split("|")) == sorted(USER_LABELS)
        assert "variant fixture_photos" in evaluate(
            "document.getElementById('status').textContent")


@NEEDS_CHROMIUM
@pytest.mark.parametrize("page, rendered", [
    # Swagger UI lists an operation block per route; ReDoc renders its side menu. Both load
    # their scripts from the server (the browser here has no internet, like many deployments).
    ("/docs", "document.querySelectorAll('.opblock').length > 10"),
    ("/redoc", "document.querySelectorAll('[role=menuitem]').length > 10"),
])
def test_docs_pages_render_offline_in_headless_chromium(server, tmp_path, page, rendered):
    with chromium_page(server + page, tmp_path) as (evaluate, wait_for):
        assert wait_for(rendered)
        sources = evaluate("Array.from(document.querySelectorAll('script[src], link[href]'))"
                           ".map(e => e.src || e.href)")
        assert sources and all(src.startswith(server) for src in sources), sources
