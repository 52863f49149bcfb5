"""The KServe V2 / Triton gRPC service (serve.protocols.grpc) as tritonclient.grpc users meet
it: a real uvicorn server in a thread with gRPC on its own port on the same event loop,
the official client for health, metadata and inference, the raw stub for typed contents and
malformed requests, status codes with messages for bad input, the API key and metrics."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import uvicorn
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serve import dataplane
from serve.app import create_app
from serve.fixtures import write_fixture_artifacts
from serve.protocols.grpc import NOT_SERVED, InferenceService
from serve.settings import Settings
from core.artifacts import selected_variant
from core.runtime import variant_session
from tests.conftest import REPO
from tests.test_serve_live import free_port, stop

RNG = np.random.default_rng(0)


class Server:
    """uvicorn in a thread, as `python -m serve` runs it (uvloop), gRPC on its own port."""

    def __init__(self, artifacts, **settings):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.app = create_app(Settings(artifacts=artifacts, providers=("cpu",), threads=1,
                                       port=self.http_port, grpc_port=self.grpc_port,
                                       **settings))
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",
                                                     port=self.http_port, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        self.address = f"127.0.0.1:{self.grpc_port}"
        deadline = time.monotonic() + 30
        while not (self.uvicorn.started and self.app.state.repository.loading_done):
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.02)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return write_fixture_artifacts(tmp_path_factory.mktemp("serve-grpc"))


@pytest.fixture(scope="module")
def server(artifacts):
    s = Server(artifacts)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.address)


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def reference_probs(artifacts, task, x):
    """The model run locally on model inputs (already preprocessed)."""
    session = variant_session(selected_variant(artifacts, task), providers=("cpu",))
    return session.run(None, {"input": x})[0]


def images(n: int) -> np.ndarray:
    return RNG.random((n, 28, 28, 1), dtype=np.float32)


def tokens(n: int) -> np.ndarray:
    return RNG.integers(0, 40, (n, 64)).astype(np.int32)  # the fixture has 42 ids


def infer_input(x: np.ndarray, datatype: str | None = None, name: str = "input"):
    tensor = grpcclient.InferInput(name, list(x.shape), datatype or
                                   {np.float32: "FP32", np.int32: "INT32", np.int64: "INT64",
                                    np.float64: "FP64"}[x.dtype.type])
    tensor.set_data_from_numpy(x)
    return tensor


def output_name(client, model: str) -> str:
    return client.get_model_metadata(model).outputs[0].name


def status_of(call) -> tuple[str, str]:
    """(status code name, details) of a call that must fail."""
    with pytest.raises((InferenceServerException, grpc.RpcError)) as info:
        call()
    e = info.value
    if isinstance(e, InferenceServerException):
        return e.status().removeprefix("StatusCode."), e.message()
    return e.code().name, e.details()


# -- health and metadata ---------------------------------------------------------------------
def test_health_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fashion_mnist") and client.is_model_ready("imdb", "1")
    meta = client.get_server_metadata()
    assert meta.name == "tinyship" and list(meta.extensions) == list(dataplane.V2_EXTENSIONS)
    fashion = client.get_model_metadata("fashion_mnist", as_json=True)
    assert fashion["versions"] == ["1"]
    assert fashion["inputs"] == [{"name": "input", "datatype": "FP32",
                                  "shape": ["-1", "28", "28", "1"]}]  # int64 -> JSON strings
    imdb = client.get_model_metadata("imdb")
    assert imdb.inputs[0].datatype == "INT32" and list(imdb.inputs[0].shape) == [-1, 64]
    assert imdb.platform == "onnxruntime_onnx"


# -- inference -------------------------------------------------------------------------------
def test_infer_images_and_tokens_match_the_model_run_locally(client, artifacts):
    x = images(3)
    result = client.infer("fashion_mnist", [infer_input(x)], request_id="req-42")
    probs = result.as_numpy(output_name(client, "fashion_mnist"))
    np.testing.assert_allclose(probs, reference_probs(artifacts, "fashion_mnist", x),
                               rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-42" and response.model_version == "1"
    assert response.outputs[0].datatype == "FP32" and list(response.outputs[0].shape) == [3, 10]

    ids = tokens(2)
    name = output_name(client, "imdb")
    result = client.infer("imdb", [infer_input(ids)], model_version="1",
                          outputs=[grpcclient.InferRequestedOutput(name)])
    np.testing.assert_allclose(result.as_numpy(name), reference_probs(artifacts, "imdb", ids),
                               rtol=1e-5, atol=1e-6)


def test_typed_contents_answer_like_raw_contents(stub, artifacts):
    x = images(2)
    request = service_pb2.ModelInferRequest(model_name="fashion_mnist", id="typed")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape,
                       contents=service_pb2.InferTensorContents(fp32_contents=x.ravel()))
    response = stub.ModelInfer(request)
    assert response.id == "typed" and not response.outputs[0].HasField("contents")
    probs = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 10)
    np.testing.assert_allclose(probs, reference_probs(artifacts, "fashion_mnist", x),
                               rtol=1e-5, atol=1e-6)

    ids = tokens(1)
    request = service_pb2.ModelInferRequest(model_name="imdb")
    request.inputs.add(name="input", datatype="INT32", shape=ids.shape,
                       contents=service_pb2.InferTensorContents(int_contents=ids.ravel()))
    probs = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], np.float32)
    np.testing.assert_allclose(probs, reference_probs(artifacts, "imdb", ids).ravel(), rtol=1e-5)


def test_classification_extension_gives_top_classes_with_labels(client, server, artifacts):
    x = images(2)
    name = output_name(client, "fashion_mnist")
    result = client.infer("fashion_mnist", [infer_input(x)],
                          outputs=[grpcclient.InferRequestedOutput(name, class_count=3)])
    top = result.as_numpy(name)
    assert top.shape == (2, 3) and result.get_response().outputs[0].datatype == "BYTES"
    model = repo_model(server, "fashion_mnist")
    probs = reference_probs(artifacts, "fashion_mnist", x)
    assert [[v.decode() for v in row] for row in top] == dataplane.v2_classification(
        model, probs, 3)
    best = probs[0].argmax()
    assert top[0][0].decode().split(":")[1:] == [str(best), model.labels[best]]
    # The one-column sigmoid model classifies as Triton would classify it.
    ids, name = tokens(1), output_name(client, "imdb")
    imdb = client.infer("imdb", [infer_input(ids)],
                        outputs=[grpcclient.InferRequestedOutput(name, class_count=5)])
    assert [[v.decode() for v in row] for row in imdb.as_numpy(name)] == \
        dataplane.v2_classification(repo_model(server, "imdb"),
                                    reference_probs(artifacts, "imdb", ids), 5)


def repo_model(server, name: str):
    return server.app.state.repository.get(name, split=False)


def test_model_config_statistics_and_repository(client, stub, server):
    from serve.triton_config import served_model_config

    repo = server.app.state.repository
    config = client.get_model_config("fashion_mnist", as_json=True)["config"]
    expected = served_model_config(repo.get("fashion_mnist", split=False), repo.settings)
    assert config["name"] == "fashion_mnist" and config["max_batch_size"] == expected[
        "max_batch_size"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"

    before = client.get_inference_statistics("sign_mnist").model_stats[0].inference_count
    client.infer("sign_mnist", [infer_input(images(3))])
    stats = client.get_inference_statistics("sign_mnist", "1").model_stats
    assert [(s.name, s.version) for s in stats] == [("sign_mnist", "1")]
    assert stats[0].inference_count == before + 3
    assert stats[0].inference_stats.success.count >= 1
    every = {s.name for s in client.get_inference_statistics().model_stats}
    assert every == set(repo.names)

    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["state"]) for m in index} == {(n, "READY") for n in repo.names}
    client.unload_model("sign_mnist")
    name, details = status_of(lambda: client.infer("sign_mnist", [infer_input(images(1))]))
    assert name == "NOT_FOUND" and "unloaded" in details
    rows = {(m.name, m.state, m.reason) for m in client.get_model_repository_index().models}
    assert ("sign_mnist", "UNAVAILABLE", "unloaded") in rows
    ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True)).models
    assert "sign_mnist" not in {m.name for m in ready} and len(ready) == len(repo.names) - 1
    client.load_model("sign_mnist")
    assert client.is_model_ready("sign_mnist")
    assert client.infer("sign_mnist", [infer_input(images(1))])
    name, details = status_of(lambda: client.load_model("sign_mnist", config="{}"))
    assert name == "INVALID_ARGUMENT" and "'config' is not supported" in details
    name, _ = status_of(lambda: client.load_model("nope"))
    assert name == "NOT_FOUND"


# -- bad input -> status codes with a message --------------------------------------------------
def _request(model="fashion_mnist", datatype="FP32", shape=(1, 28, 28, 1), raw=None,
             contents=None, name="input", version="", outputs=()):
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if contents is not None:
        tensor.contents.CopyFrom(service_pb2.InferTensorContents(**contents))
    else:
        count = int(np.prod(shape))
        request.raw_input_contents.append(
            raw if raw is not None else np.full(count, 0.5, np.float32).tobytes())
    for out in outputs:
        request.outputs.add(name=out)
    return request


def _classify(k, parameter="classification"):
    request = _request(outputs=["probs"])
    param = request.outputs[0].parameters[parameter]
    if isinstance(k, str):
        param.string_param = k
    else:
        param.int64_param = k
    return request


BAD = [
    ("wrong datatype", _request(datatype="FP64", raw=np.zeros(784).tobytes()),
     "INVALID_ARGUMENT", "datatype FP64"),
    ("unknown datatype", _request(datatype="BF17"), "INVALID_ARGUMENT", "not supported"),
    ("wrong shape", _request(shape=(2, 28, 28)), "INVALID_ARGUMENT", "has shape"),
    ("raw size", _request(raw=b"\0" * 100), "INVALID_ARGUMENT", "needs 3136"),
    ("too many values", _request(shape=(1, 1 << 20, 28, 28), raw=b""), "INVALID_ARGUMENT",
     f"at most {dataplane.MAX_TENSOR_VALUES:,} values"),
    ("too many rows", _request(shape=(300, 28, 28, 1), raw=b""), "INVALID_ARGUMENT", "300 rows"),
    ("empty batch", _request(shape=(0, 28, 28, 1)), "INVALID_ARGUMENT", "empty batch"),
    ("out of range", _request(raw=np.full(784, 2.0, np.float32).tobytes()), "INVALID_ARGUMENT",
     "values span"),
    ("NaN", _request(raw=np.full(784, np.nan, np.float32).tobytes()), "INVALID_ARGUMENT",
     "NaN"),
    ("unknown input", _request(name="pixels"), "INVALID_ARGUMENT", "unknown input"),
    ("unknown output", _request(outputs=["logits"]), "INVALID_ARGUMENT", "unknown output"),
    ("unknown model", _request(model="nope"), "NOT_FOUND", "unknown model 'nope'"),
    ("unknown version", _request(version="7"), "NOT_FOUND", "no version '7'"),
    ("classification of 0", _classify(0), "INVALID_ARGUMENT", "classification=0"),
    ("classification as text", _classify("3"), "INVALID_ARGUMENT", "classification='3'"),
    ("unknown output parameter", _classify(3, "top"), "INVALID_ARGUMENT",
     "output parameter 'top'"),
    ("contents in the wrong field", _request(contents={"int_contents": [0] * 784}),
     "INVALID_ARGUMENT", "contents in int_contents"),
    ("INT32 in int64_contents", _request("imdb", "INT32", (1, 64),
                                         contents={"int64_contents": [1] * 64}),
     "INVALID_ARGUMENT", "expected the values in contents.int_contents"),
    # An id beyond int32 is refused, not wrapped (2**40 + 7 once answered as id 7).
    ("int overflow", _request("imdb", "INT64", (1, 64), contents={"int64_contents":
                                                                  [2**40 + 7] * 64}),
     "INVALID_ARGUMENT", "datatype INT64"),
    ("id beyond the vocabulary", _request("imdb", "INT32", (1, 64),
                                          raw=np.full(64, 10**6, np.int32).tobytes()),
     "INVALID_ARGUMENT", "values span"),
]


@pytest.mark.parametrize("request_,code,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_status_code_and_a_message(stub, request_, code, words):
    name, details = status_of(lambda: stub.ModelInfer(request_))
    assert name == code and words in details, details
    assert "expected" in details and "Traceback" not in details and "/tmp" not in details


def test_every_domain_error_has_its_own_status_code():
    """Each error of the HTTP table maps to a code chosen for it, not to the fallback."""
    from serve import errors
    from serve.protocols.grpc import GRPC_STATUS, grpc_status

    for cls in errors.HTTP_STATUS:
        own = cls.__mro__[:cls.__mro__.index(errors.ServeError)]
        assert any(c in GRPC_STATUS for c in own), cls
    def code(cls) -> str:
        return grpc_status(cls.__new__(cls)).name

    assert {code(errors.InvalidInput), code(errors.TooManyRows)} == {"INVALID_ARGUMENT"}
    assert code(errors.UnknownModel) == "NOT_FOUND" and code(errors.InferenceFailed) == "INTERNAL"
    assert {code(errors.ModelNotReady), code(errors.Overloaded)} == {"UNAVAILABLE"}
    assert code(errors.BodyTooLarge) == "RESOURCE_EXHAUSTED"


def test_both_contents_and_raw_contents_are_refused(stub):
    request = _request()
    request.inputs[0].contents.fp32_contents.extend([0.5] * 784)
    name, details = status_of(lambda: stub.ModelInfer(request))
    assert name == "INVALID_ARGUMENT" and "both contents and raw_input_contents" in details


def test_on_uvicorns_loop_message_limit_and_stopped_with_the_app(artifacts, monkeypatch):
    from serve.protocols import grpc as grpc_service

    loops = []
    real_start = grpc_service.start

    async def start(*args):
        loops.append(asyncio.get_running_loop())
        return await real_start(*args)

    monkeypatch.setattr(grpc_service, "start", start)
    s = Server(artifacts, max_body_bytes=64 * 1024)
    try:
        # Started by the app's lifespan on uvicorn's loop: uvloop where installed ("auto").
        uvloop = pytest.importorskip("uvloop")
        assert len(loops) == 1 and isinstance(loops[0], uvloop.Loop)
        client = grpcclient.InferenceServerClient(s.address)
        assert client.infer("fashion_mnist", [infer_input(images(4))])  # 12.5 KB
        name, details = status_of(lambda: client.infer("fashion_mnist",
                                                       [infer_input(images(32))]))  # 100 KB
        assert name == "RESOURCE_EXHAUSTED", details
    finally:
        s.stop()
    # Stopped with the app's lifespan: the port no longer answers.
    name, _ = status_of(lambda: grpcclient.InferenceServerClient(s.address).is_server_live())
    assert name == "UNAVAILABLE"


def test_server_faults_are_internal_and_logged_and_bugs_hide_their_text(server, client,
                                                                      monkeypatch, caplog):
    from serve.errors import InferenceFailed

    repo = server.app.state.repository
    for fault, words in ((InferenceFailed("model 'imdb' failed on a batch of 1"), "failed on"),
                         (RuntimeError("secret /srv/path <object at 0x1>"), "internal error")):
        async def infer(model, x, fault=fault):
            raise fault

        monkeypatch.setattr(repo, "infer", infer)
        name, details = status_of(lambda: client.infer("imdb", [infer_input(tokens(1))]))
        assert name == "INTERNAL" and words in details and "/srv" not in details, details
    monkeypatch.undo()
    faults = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any(r.name == "serve.access" and r.fields["status"] == "INTERNAL" for r in faults)
    assert any(r.name == "serve.grpc" and r.exc_info for r in faults)  # the bug's traceback
    assert client.infer("imdb", [infer_input(tokens(1))])


def test_connections_beyond_max_connections_are_refused(artifacts):
    s = Server(artifacts, max_connections=2)
    channels = []
    try:
        answers = []
        for _ in range(3):
            # Each channel its own connection (no subchannel shared across channels).
            channels.append(grpc.insecure_channel(s.address,
                                                  options=[("grpc.use_local_subchannel_pool", 1)]))
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channels[-1])
            try:
                answers.append(stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5).live)
            except grpc.RpcError as e:
                answers.append(e.code().name)
        assert answers == [True, True, "UNAVAILABLE"]
    finally:
        for channel in channels:
            channel.close()
        s.stop()


def test_unknown_model_metadata_and_readiness_are_not_found(client):
    for call in (lambda: client.get_model_metadata("nope"),
                 lambda: client.is_model_ready("nope"),
                 lambda: client.is_model_ready("imdb", "2")):
        name, details = status_of(call)
        assert name == "NOT_FOUND" and "expected" in details


def test_rpcs_without_data_behind_them_say_unimplemented(stub):
    """Every RPC of the service is implemented or answers UNIMPLEMENTED with its reason."""
    methods = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    assert set(NOT_SERVED) <= {m.name for m in methods}
    # None is left to the generated base class, whose answer names no reason.
    base = service_pb2_grpc.GRPCInferenceServiceServicer
    assert all(getattr(InferenceService, m.name) is not getattr(base, m.name) for m in methods)
    for method in methods:
        if method.name not in NOT_SERVED:
            continue
        call = getattr(stub, method.name)
        request = getattr(service_pb2, method.input_type.name)()
        if method.client_streaming:
            name, details = status_of(lambda: list(call(iter([request]))))
        else:
            name, details = status_of(lambda: call(request))
        assert name == "UNIMPLEMENTED", method.name
        assert details.startswith(f"{method.name} is not implemented by this server: "), details


# -- auth and metrics ----------------------------------------------------------------------------
def test_api_key_protects_everything_but_health(artifacts, caplog):
    caplog.set_level("INFO", logger="serve.access")
    s = Server(artifacts, api_key="s3cret", access_log=True)
    try:
        client = grpcclient.InferenceServerClient(s.address)
        assert client.is_server_live() and client.is_server_ready()
        for headers, words in ((None, "needs an API key"),
                               ({"authorization": "Bearer wrong"}, "API key is wrong")):
            for call in (lambda: client.get_model_metadata("imdb", headers=headers),
                         lambda: client.infer("imdb", [infer_input(tokens(1))],
                                              headers=headers)):
                name, details = status_of(call)
                assert name == "UNAUTHENTICATED" and words in details, details
        good = {"authorization": "Bearer s3cret"}
        assert client.get_model_metadata("imdb", headers=good).name == "imdb"
        assert client.infer("imdb", [infer_input(tokens(1))], headers=good)
        requests = s.app.state.metrics.requests
        assert requests["-", "grpc:ModelInfer", "UNAUTHENTICATED"] == 2
        assert requests["imdb", "grpc:ModelInfer", "OK"] == 1
        # The access log has a line per RPC served, as for HTTP requests.
        lines = [r.fields for r in caplog.records if r.name == "serve.access"]
        assert {"rpc": "grpc:ModelInfer", "status": "OK", "model": "imdb"}.items() <= \
            next(f for f in lines if f["rpc"] == "grpc:ModelInfer").items()
    finally:
        s.stop()


def test_metrics_count_rpcs_by_model_route_and_status(server, client):
    requests = server.app.state.metrics.requests
    before = requests["sign_mnist", "grpc:ModelInfer", "OK"]
    client.infer("sign_mnist", [infer_input(images(1))])
    status_of(lambda: client.infer("sign_mnist", [infer_input(images(1), name="x")]))
    status_of(lambda: client.infer("no-such-model", [infer_input(images(1))]))
    assert requests["sign_mnist", "grpc:ModelInfer", "OK"] == before + 1
    assert requests["sign_mnist", "grpc:ModelInfer", "INVALID_ARGUMENT"] >= 1
    assert requests["-", "grpc:ModelInfer", "NOT_FOUND"] >= 1  # unknown names: one label
    text = server.app.state.metrics.render().decode()
    assert 'route="grpc:ModelInfer",status="OK"' in text


def _listeners(port: int) -> int:
    """Listening TCP sockets on `port` (Linux /proc/net: one line per socket)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="counts sockets in /proc/net")
def test_every_worker_binds_the_grpc_port_and_metrics_add_up(tmp_path):
    artifacts = write_fixture_artifacts(tmp_path / "artifacts")
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--port", str(http_port),
                             "--grpc-port", str(grpc_port), "--artifacts", str(artifacts),
                             "--providers", "cpu", "--workers", "2", "--threads", "1",
                             "--log-level", "warning"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while _listeners(grpc_port) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        assert _listeners(grpc_port) == 2  # SO_REUSEPORT: one socket per worker
        sent = 0
        while sent < 20:
            assert time.monotonic() < deadline, "gRPC requests kept failing"
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")  # new connection
            try:
                client.infer("imdb", [infer_input(tokens(1))])
                sent += 1
            except InferenceServerException as e:
                assert e.status() == "StatusCode.UNAVAILABLE", e  # a worker still loading
                time.sleep(0.05)
            finally:
                client.close()
        time.sleep(1.5)  # every worker has written its metrics snapshot since
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        line = re.search(r'tinyship_requests_total\{model="imdb",route="grpc:ModelInfer",'
                         r'status="OK"\} (\S+)', text)
        assert line and float(line.group(1)) == sent, text[:2000]
    finally:
        stop(proc)
    assert not re.search(r'"level": ?"error"', proc.stderr.read())
