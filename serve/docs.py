"""OpenAPI text and examples for /docs (the routes read raw bodies, so we declare them here)."""
from __future__ import annotations

import functools

DESCRIPTION = """
Image and text classifiers (Fashion-MNIST, Sign-Language letters, IMDB sentiment) served with
ONNX Runtime. Three ways in:

* **friendly**: `POST /v1/classify/{task}` with pixels, an image or text; answers top-k labels;
* **v2**: the Open Inference Protocol (KServe V2, Triton's HTTP API) incl. binary tensors;
* **tfserving**: TensorFlow Serving's `POST /v1/models/{name}:predict`.

Tasks: `fashion_mnist`, `sign_mnist`, `imdb`; they are also the model names of the standard
protocols, whose tensors are the ONNX model's own (preprocessed) inputs and outputs.
With an API key configured, send `Authorization: Bearer <key>` (health probes are open).
Errors are JSON: `{"error": "...", "code": "...", "expected": "..."}`.
"""

TAGS = [
    {"name": "friendly", "description": "Raw inputs in, human labels out."},
    {"name": "v2", "description": "Open Inference Protocol (KServe V2 / Triton HTTP)."},
    {"name": "tfserving", "description": "TensorFlow Serving REST API."},
    {"name": "operations", "description": "Metrics."},
]

_PIXELS_EXAMPLE = [[0] * 28 for _ in range(28)]
_TOP_K = [{"label": "Ankle boot", "class_id": 9, "probability": 0.97},
          {"label": "Sneaker", "class_id": 7, "probability": 0.02},
          {"label": "Sandal", "class_id": 5, "probability": 0.01}]

CLASSIFY_BODY = {
    "parameters": [
        {"name": "task", "in": "path", "required": True,
         "schema": {"type": "string", "enum": ["fashion_mnist", "sign_mnist", "imdb"]}},
        {"name": "k", "in": "query", "required": False, "description": "how many classes",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3}},
        {"name": "invert", "in": "query", "required": False,
         "description": "uploaded images: invert the grayscale; auto inverts light-background "
                        "photos for fashion_mnist (its images are bright on black)",
         "schema": {"type": "string", "enum": ["auto", "true", "false"], "default": "auto"}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {
                    "pixels": {"description": "28x28 numbers 0..255 (or a list of such "
                               "arrays for a batch); images: fashion_mnist, sign_mnist",
                               "type": "array", "items": {}},
                    "image_base64": {"type": "string",
                                     "description": "a PNG/JPEG file, base64 (data: URL ok)"},
                    "text": {"type": "string", "description": "one review (imdb)"},
                    "texts": {"type": "array", "items": {"type": "string"},
                              "description": "several reviews (imdb)"}}},
                "examples": {
                    "pixels": {"summary": "fashion_mnist / sign_mnist: one 28x28 image",
                               "value": {"pixels": _PIXELS_EXAMPLE}},
                    "image_base64": {"summary": "an encoded image (1x1 white PNG here)",
                                     "value": {"image_base64": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
                                               "CAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAW8Jx1QAAAABJ"
                                               "RU5ErkJggg=="}},
                    "text": {"summary": "imdb: one review",
                             "value": {"text": "A wonderful film, I loved every minute."}},
                    "texts": {"summary": "imdb: a batch",
                              "value": {"texts": ["Great acting.", "Dull and far too long."]}},
                },
            },
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "any size or colour; converted to 28x28 gray"}}},
            },
        },
    },
}

CLASSIFY_RESPONSES = {
    200: {"description": "top-k labels (one input) or a list of them (`results`, batch)",
          "content": {"application/json": {"example": {
              "task": "fashion_mnist", "variant": "fashion_cnn-qat-int8", "model": "fashion_cnn",
              "top_k": _TOP_K,
              "timing_ms": {"queue": 0.01, "inference": 0.05, "batch_rows": 1, "total": 0.2}}}}},
    422: {"description": "input the model cannot take",
          "content": {"application/json": {"example": {
              "error": "pixel values must be in 0..255, got min 0 and max 300",
              "code": "invalid_input", "expected": '{"pixels": <28x28 numbers 0..255>}'}}}},
    503: {"description": "model loading/failed, or queue full (with Retry-After)"},
}

V2_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON; or with header Inference-Header-Content-Length: N, an N-byte "
                       "JSON header followed by raw little-endian tensors (binary extension).",
        "content": {"application/json": {"examples": {
            "fashion_mnist": {"summary": "one preprocessed image (FP32 [1,28,28,1], values "
                              "0..1 for minmax scaling)",
                              "value": {"inputs": [{"name": "input", "datatype": "FP32",
                                                    "shape": [1, 28, 28, 1],
                                                    "data": [0.0] * 784}]}},
        }}},
    },
}

TFS_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"examples": {
            "instances": {"summary": "row format: one model input per instance",
                          "value": {"instances": [[[[0.0]] * 28] * 28]}},
            "inputs": {"summary": "columnar format",
                       "value": {"inputs": {"input": [[[[0.0]] * 28] * 28]}}},
        }}},
    },
}


def _example(value, description: str = "OK") -> dict:
    return {200: {"description": description, "content": {"application/json": {"example": value}}}}


V2_METADATA_RESPONSES = _example({
    "name": "fashion_mnist", "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
    "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]})
V2_READY_RESPONSES = _example({"name": "fashion_mnist", "ready": True},
                              "ready (503 with an error while loading or after a failed load)")
V2_INFER_RESPONSES = _example({
    "model_name": "fashion_mnist", "model_version": "1", "id": "req-7",
    "outputs": [{"name": "probs", "datatype": "FP32", "shape": [1, 10],
                 "data": [0.01, 0.0, 0.02, 0.01, 0.0, 0.03, 0.01, 0.05, 0.0, 0.87]}]},
    "JSON; with binary outputs requested, an Inference-Header-Content-Length JSON header "
    "followed by the raw tensor bytes")
TFS_STATUS_RESPONSES = _example({"model_version_status": [
    {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
TFS_PREDICT_RESPONSES = _example({"predictions": [[0.01, 0.0, 0.02, 0.01, 0.0, 0.03, 0.01, 0.05,
                                                   0.0, 0.87]]},
                                 "`predictions` for `instances`, `outputs` for `inputs`")
MODELS_RESPONSES = _example({"models": [{
    "name": "fashion_mnist", "state": "ready", "variant": "fashion_cnn-qat-int8",
    "model": "fashion_cnn", "runtime": "onnx", "provider": "CPUExecutionProvider",
    "placement": "cpu", "kind": "image", "input_shape": [28, 28, 1],
    "labels": ["T-shirt/top", "..."],
    "test_accuracy": 0.91, "lineage": {"parent": "fashion_cnn", "technique": "qat",
                                       "params": {}}}]})
# TensorFlow Serving's metadata, :classify and the Triton repository extension, as the
# fixture models answer them (the shapes are the protocols'; the numbers are examples).
_TFS_DIM = [{"size": "-1", "name": ""}, {"size": "28", "name": ""}, {"size": "28", "name": ""},
            {"size": "1", "name": ""}]
TFS_METADATA_RESPONSES = _example({
    "model_spec": {"name": "fashion_mnist", "signature_name": "", "version": "1"},
    "metadata": {"signature_def": {
        "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
        "signature_def": {"serving_default": {
            "inputs": {"input": {"dtype": "DT_FLOAT", "name": "input",
                                 "tensor_shape": {"dim": _TFS_DIM, "unknown_rank": False}}},
            "outputs": {"probs": {"dtype": "DT_FLOAT", "name": "probs", "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": "10", "name": ""}],
                "unknown_rank": False}}},
            "method_name": "tensorflow/serving/predict", "defaults": {}}}}}})
TFS_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"examples": {
            "imdb": {"summary": "one example: the model input's token ids",
                     "value": {"examples": [{"input": [1, 14, 22, 16, 43]}]}},
        }}},
    },
}
TFS_CLASSIFY_RESPONSES = _example(
    {"results": [[["negative", 0.94], ["positive", 0.06]]]},
    "per example, [label, score] for every class")
TFS_REGRESS_RESPONSES = {400: {"description": "always: every model here is a classifier",
                               "content": {"application/json": {"example": {
                                   "error": "model 'fashion_mnist' is a classifier and has no "
                                            "regression signature",
                                   "code": "invalid_input",
                                   "expected": "POST /v1/models/fashion_mnist:classify (labels "
                                               "and scores) or :predict (the output tensor)"}}}}}
REPOSITORY_INDEX_RESPONSES = _example(
    [{"name": "fashion_mnist", "version": "1", "state": "READY", "reason": ""},
     {"name": "imdb", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}],
    "every model version; body {} or {\"ready\": true} for the ready ones only")
REPOSITORY_CHANGE_RESPONSES = {200: {"description": "done (empty body)"},
                               404: {"description": "no such model in the repository"}}

SERVER_RESPONSES = _example({"name": "tinyship", "version": "0.1.0",
                             "extensions": ["binary_tensor_data"]})
LIVE_RESPONSES = _example({"live": True})
READY_RESPONSES = _example({"ready": True}, "ready; 503 with {\"ready\": false} while loading "
                           "or when no model could be loaded")
METRICS_RESPONSES = {200: {"description": "Prometheus text format", "content": {"text/plain": {
    "example": 'tinyship_requests_total{model="imdb",route="/v1/classify/{task}",status="200"} '
               '42.0\ntinyship_batch_size_bucket{le="8",model="imdb"} 40.0\n'
               'tinyship_model_state{model="imdb",state="ready"} 1.0'}}}}


# -- the documentation pages, served offline ------------------------------------------------------
# FastAPI's /docs and /redoc load Swagger UI and ReDoc from a CDN, so they are blank where the
# server (or the browser) has no internet. The same files ship in the fastapi-offline package;
# they are served from here, by name (nothing else in that folder is reachable), without
# Google's fonts (ReDoc falls back to the browser's).
DOCS_ASSETS_PATH = "/docs-assets"
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def router(title: str, openapi_url: str = "/openapi.json"):
    import importlib.resources

    from fastapi import APIRouter
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import Response

    from serve.errors import NotFound

    folder = importlib.resources.files("fastapi_offline") / "static"
    read = functools.cache(lambda name: (folder / name).read_bytes())
    r = APIRouter(include_in_schema=False)

    @r.get("/docs")
    async def swagger_ui():
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png")

    @r.get("/redoc")
    async def redoc():
        return get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
                              with_google_fonts=False)

    @r.get(DOCS_ASSETS_PATH + "/{name}")
    async def asset(name: str):
        if name not in DOCS_ASSETS:
            raise NotFound(f"no documentation asset {name!r}",
                               expected=f"one of {', '.join(sorted(DOCS_ASSETS))}")
        return Response(read(name), media_type=DOCS_ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})

    return r
