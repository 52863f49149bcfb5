"""serve runs the runtime the selection chose (ONNX Runtime or LiteRT) and says so; the answers
do not depend on it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core import data
from core.artifacts import select_variant
from serve.app import create_app
from serve.settings import Settings
from tests.conftest import loaded_model

TASK, VARIANT = "fashion_mnist", "fashion_mnist_tiny"


def test_same_answers_on_an_onnx_and_a_litert_placement(tiny_artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / TASK, root / TASK)
    pixels = data.load(TASK, "test").x[:1000]
    top1, probs = {}, {}
    for runtime in ("onnx", "litert"):
        select_variant(root, TASK, VARIANT, reason={"why": "test"}, runtime=runtime)
        app = create_app(Settings(artifacts=root, providers=("cpu",), threads=1))
        with TestClient(app) as client:
            model = loaded_model(client, TASK)
            assert (model["runtime"], model["placement"]) == (runtime, "cpu")
            assert model["provider"] == {"onnx": "CPUExecutionProvider",
                                         "litert": "LiteRT CPU (XNNPACK)"}[runtime]
            meta = client.get(f"/v2/models/{TASK}").json()
            assert meta["platform"] == {"onnx": "onnxruntime_onnx", "litert": "litert_tflite"}[runtime]
            metrics = client.get("/metrics").text
            assert (f'tinyship_model_info{{model="{TASK}",placement="cpu",provider="'
                    f'{model["provider"]}",runtime="{runtime}",variant="{VARIANT}"}} 1.0') in metrics
            answers = []
            for i in range(0, len(pixels), 100):
                r = client.post(f"/v1/classify/{TASK}?k=10", json={"pixels": pixels[i:i + 100].tolist()})
                assert r.status_code == 200, r.text
                answers += r.json()["results"]
        top1[runtime] = [a["top_k"][0]["class_id"] for a in answers]
        probs[runtime] = np.array([[t["probability"] for t in sorted(a["top_k"], key=lambda t: t["class_id"])]
                                   for a in answers])
    assert len(top1["onnx"]) == 1000 and top1["onnx"] == top1["litert"]
    np.testing.assert_allclose(probs["onnx"], probs["litert"], atol=1e-5)


def test_a_cuda_request_without_cuda_is_one_warning_line(tiny_artifacts, tmp_path, caplog):
    from core.runtime import usable_providers

    if "CUDAExecutionProvider" in usable_providers():
        pytest.skip("this host has CUDA")
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / TASK, root / TASK)
    shutil.copytree(tiny_artifacts / "sign_mnist", root / "sign_mnist")
    select_variant(root, TASK, VARIANT)
    select_variant(root, "sign_mnist", "sign_mnist_tiny")
    from serve import model as served

    served._warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="serve.model"):
        with TestClient(create_app(Settings(artifacts=root, providers=("cuda", "cpu")))) as client:
            assert loaded_model(client, TASK)["placement"] == "cpu"
            loaded_model(client, "sign_mnist")
    warnings = [r.getMessage() for r in caplog.records if "was asked for" in r.getMessage()]
    assert len(warnings) == 1 and "CUDAExecutionProvider" in warnings[0], warnings
    assert "serving the CPU choice on the CPU" in warnings[0]


CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_CHOICE = {"cpu": {"variant": "m-int8", "runtime": "onnx", "measured": True},
              "gpu": {"variant": "m-fp16", "runtime": "onnx", "provider": TRT, "measured": True}}


@pytest.mark.parametrize("requested, usable, placements, expected", [
    # A GPU host with a measured GPU placement: its variant on its provider, CUDA and CPU after.
    (("cuda", "cpu"), (TRT, CUDA, CPU), GPU_CHOICE, ("gpu", "m-fp16", "onnx", (TRT, CUDA, "cpu"))),
    # TensorRT not usable: the GPU choice on CUDA.
    (("cuda", "cpu"), (CUDA, CPU), GPU_CHOICE, ("gpu", "m-fp16", "onnx", (CUDA, "cpu"))),
    # GPU usable but never measured: the CPU choice stays on the CPU, with a note.
    (("cuda", "cpu"), (CUDA, CPU), {"gpu": {"measured": False, "why": "not measured"}},
     ("cpu", None, "litert", ("cpu",))),
    # No GPU here (this machine): the CPU choice, with a note.
    (("cuda", "cpu"), (CPU,), GPU_CHOICE, ("cpu", None, "litert", ("cpu",))),
    # Only the CPU asked for: no note.
    (("cpu",), (CUDA, CPU), GPU_CHOICE, ("cpu", None, "litert", ("cpu",))),
])
def test_placement_follows_the_providers_really_usable(requested, usable, placements, expected):
    from serve.model import choose_placement

    where = choose_placement(requested, usable, "litert", placements)
    assert (where.name, where.variant, where.runtime, where.providers) == expected
    assert bool(where.note) == (expected[0] == "cpu" and requested[0] != "cpu")


def test_triton_export_of_a_litert_selection_takes_the_onnx_choice(tiny_artifacts, tmp_path):
    """Triton has no TFLite backend: a task served on LiteRT from a TFLite-only variant is
    exported with the selection's best ONNX candidate."""
    from core.artifacts import create_variant, find_variant
    from serve.triton_export import export_triton

    root = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts / TASK, root / TASK)
    base = find_variant(root, TASK, VARIANT)
    with create_variant(root, task=TASK, model=VARIANT, variant=f"{VARIANT}-tflite-only",
                        lineage={"parent": VARIANT, "technique": "tflite", "params": {}},
                        input=base.input, output=base.output,
                        preprocessing=dict(base.manifest.preprocessing),
                        labels=base.labels) as v:
        shutil.copy2(base.file("model.tflite"), v.path("model.tflite"))
    placements = {"cpu": {"variant": f"{VARIANT}-tflite-only", "runtime": "litert"},
                  "cpu-onnx": {"variant": VARIANT, "runtime": "onnx"}}
    select_variant(root, TASK, f"{VARIANT}-tflite-only", reason={"placements": placements},
                   runtime="litert")
    exported, skipped = export_triton(root, tmp_path / "repo", tasks=[TASK])
    assert [(e.task, e.variant) for e in exported] == [(TASK, VARIANT)] and not skipped
