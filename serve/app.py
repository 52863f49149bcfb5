"""The FastAPI app: thin routes over the model repository and the data plane.

`create_app(settings)` builds everything; models load in the background after the server
starts listening (`/v2/health/ready` says when they are warm). Routes only pick the model,
hand the body to `serve.dataplane` and return bytes; every domain error becomes a JSON answer
through the one handler below (statuses in `serve.errors.HTTP_STATUS`).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import dataplane, docs
from serve.errors import InvalidInput, ServeError, http_status
from serve.fastpath import ClassifyFastPath, classify_json
from serve.metrics import ServerMetrics
from serve.middleware import RequestContextMiddleware
from serve.repository import ModelRepository
from serve.settings import Settings

log = logging.getLogger("serve.app")
SERVER_NAME = "tinyship"
SERVER_VERSION = "0.1.0"
DEMO_PAGE = Path(__file__).with_name("static") / "index.html"
JSON = "application/json"


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def error_response(error: ServeError) -> Response:
    return json_response(error.as_dict(), http_status(error), error.headers)


def create_app(settings: Settings | None = None, *, load_models: bool = True) -> FastAPI:
    """The app for `settings`; load_models=False leaves every model loading (tests of readiness)."""
    settings = settings or Settings.from_env()
    metrics = ServerMetrics()
    repo = ModelRepository(settings, metrics)

    async def load_then_freeze() -> None:
        await repo.load_all()
        # Everything alive now (libraries, sessions, the app) lives as long as the process.
        # Freezing it keeps it out of every later garbage collection: a full collection of
        # this heap takes tens of milliseconds, which would otherwise land in the p99.
        gc.collect()
        gc.freeze()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(load_then_freeze()) if load_models else None
        yield
        if loader is not None and not loader.done():
            loader.cancel()
        await repo.close()
        log.info("server stopped: queued requests answered")

    # FastAPI's native OpenTelemetry asks the global providers on every request whether it is
    # enabled (a few us with none configured). Off unless asked for (SERVE_OPENTELEMETRY=true);
    # /metrics covers the basics.
    otel = settings.opentelemetry
    app = FastAPI(title="tinyship serve", version=SERVER_VERSION, lifespan=lifespan,
                  description=docs.DESCRIPTION, openapi_tags=docs.TAGS,
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel})
    app.state.settings, app.state.repository, app.state.metrics = settings, repo, metrics

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def query_error(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return error_response(InvalidInput(f"invalid parameter ({problems})",
                                           expected="see /docs for the parameters"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        expected = "see /docs for the endpoints" if error.status_code in (404, 405) else None
        body = {"error": str(error.detail), "code": f"http_{error.status_code}"}
        if expected:
            body["expected"] = expected
        return json_response(body, error.status_code, error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        # The app boundary: a bug must still answer JSON and leave a trace with the request id.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return json_response({"error": f"internal error ({type(error).__name__})",
                              "code": "internal"}, 500)

    # -- demo page and docs ---------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def demo_page():
        return HTMLResponse(DEMO_PAGE.read_text())

    # -- friendly API ---------------------------------------------------------------------
    @app.post("/v1/classify/{task}", tags=["friendly"], summary="Top-k classes of an input",
              openapi_extra=docs.CLASSIFY_BODY, responses=docs.CLASSIFY_RESPONSES)
    async def classify(request: Request):
        # Parameters are read by hand, not declared: FastAPI's per-parameter validation costs
        # more than the model (docs.CLASSIFY_BODY documents them for /docs). JSON bodies are
        # usually answered before this route by serve.fastpath, with the same classify_json.
        task = request.path_params["task"]
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return Response(await classify_json(repo, task, request.query_params,
                                                await request.body()), media_type=JSON)
        start = time.perf_counter()
        k, invert = dataplane.classify_params(request.query_params)
        model = repo.get(task)
        model.require_ready()
        x = await _uploaded_image(request, model, invert)
        raw, timing = await repo.infer(model, x)
        timing["total"] = round((time.perf_counter() - start) * 1e3, 3)
        return Response(dataplane.classify_answer(model, model.probabilities(raw), k, True,
                                                  timing), media_type=JSON)

    async def _uploaded_image(request: Request, model, invert: str):
        if model.kind != "image":
            raise InvalidInput(f"task {model.name!r} takes text, not an uploaded file",
                               expected=dataplane.EXAMPLE_HINTS["text"])
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidInput("the multipart form has no file field named 'file'",
                                   expected="multipart/form-data with an image in field 'file'")
            data = await upload.read()
        return dataplane.image_inputs(model, data, invert)

    @app.get("/v1/models", tags=["friendly"], summary="Every model: state, variant, labels",
             responses=docs.MODELS_RESPONSES)
    async def list_models():
        return json_response({"models": [m.describe() for m in repo.models.values()]})

    # -- Open Inference Protocol (KServe V2) ----------------------------------------------
    @app.get("/v2", tags=["v2"], summary="Server metadata", responses=docs.SERVER_RESPONSES)
    async def v2_server():
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION,
                              "extensions": ["binary_tensor_data"]})

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness (the process answers)",
             responses=docs.LIVE_RESPONSES)
    async def v2_live():
        return json_response({"live": True})

    @app.get("/v2/health/ready", tags=["v2"],
             summary="Readiness: loading finished and at least one model warm",
             responses=docs.READY_RESPONSES)
    async def v2_ready():
        return json_response({"ready": repo.ready}, 200 if repo.ready else 503)

    @app.get("/v2/models/{name}", tags=["v2"], summary="Model metadata (tensors)",
             responses=docs.V2_METADATA_RESPONSES)
    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"], include_in_schema=False)
    async def v2_metadata(name: str, version: str = dataplane.PROTOCOL_VERSION):
        model = _v2_model(name, version)
        model.require_ready()
        return json_response(dataplane.v2_model_metadata(model))

    @app.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness",
             responses=docs.V2_READY_RESPONSES)
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], include_in_schema=False)
    async def v2_model_ready(name: str, version: str = dataplane.PROTOCOL_VERSION):
        model = _v2_model(name, version)
        body = {"name": name, "ready": model.ready}
        if model.error:
            body["error"] = model.error
        return json_response(body, 200 if model.ready else 503)

    @app.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference (JSON or binary tensors)",
              openapi_extra=docs.V2_INFER_BODY, responses=docs.V2_INFER_RESPONSES)
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], include_in_schema=False)
    async def v2_infer(request: Request, name: str, version: str = dataplane.PROTOCOL_VERSION):
        model = _v2_model(name, version)
        model.require_ready()
        header = request.headers.get("inference-header-content-length")
        if header is not None and not header.isdigit():
            raise InvalidInput(f"Inference-Header-Content-Length {header!r} is not a number",
                               expected="the byte length of the JSON header")
        decoded = dataplane.v2_decode(model, await request.body(),
                                      int(header) if header is not None else None)
        raw, _ = await repo.infer(model, decoded.inputs)
        body, header_length = dataplane.v2_encode(model, decoded, raw)
        if header_length is None:
            return Response(body, media_type=JSON)
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_length)})

    def _v2_model(name: str, version: str):
        model = repo.get(name)
        if version != dataplane.PROTOCOL_VERSION:
            raise dataplane.UnknownVersion(name, version)
        return model

    # -- TensorFlow Serving REST ----------------------------------------------------------
    @app.get("/v1/models/{name}", tags=["tfserving"], summary="Model status",
             responses=docs.TFS_STATUS_RESPONSES)
    async def tfs_status(name: str):
        return json_response(dataplane.tfserving_status(repo.get(name)))

    @app.post("/v1/models/{name}:predict", tags=["tfserving"], summary="Predict",
              openapi_extra=docs.TFS_PREDICT_BODY, responses=docs.TFS_PREDICT_RESPONSES)
    async def tfs_predict(request: Request, name: str):
        model = repo.get(name)
        model.require_ready()
        x, key = dataplane.tfserving_decode(model, await request.body())
        raw, _ = await repo.infer(model, x)
        return Response(orjson.dumps({key: raw.tolist()}), media_type=JSON)

    # -- operations -----------------------------------------------------------------------
    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             responses=docs.METRICS_RESPONSES)
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    # Middleware added first runs innermost: the fast path sits inside CORS and the request
    # context, so it gets the same headers, auth, body limit and metrics as every route.
    if settings.fast_path:
        app.add_middleware(ClassifyFastPath, repository=repo)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID",
                                          "Inference-Header-Content-Length"],
                           expose_headers=["X-Request-ID", "Inference-Header-Content-Length"])
    app.add_middleware(RequestContextMiddleware, metrics=metrics, known_models=repo.models,
                       api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       access_log=settings.access_log, activity=repo.activity)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from the environment."""
    return create_app(Settings.from_env())
