"""The FastAPI app: one router per protocol over the model repository and the data plane.

`create_app(settings)` wires the parts: the protocols' routers (`serve.protocols`), the error
boundary (`serve.boundary`), the middleware (`serve.middleware`, `serve.fastpath`). Models
load in the background after the server starts listening (`/v2/health/ready` says when they
are warm).
"""
from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serve import boundary, docs
from serve.fastpath import ClassifyFastPath
from serve.metrics import ServerMetrics, SharedMetrics
from serve.middleware import RequestContextMiddleware
from serve.protocols import friendly, ops, tfserving, triton, v2
from serve.protocols import grpc as grpc_service
from serve.repository import ModelRepository
from serve.responses import SERVER_VERSION
from serve.settings import Settings

log = logging.getLogger("serve.app")

# Middle-generation collections between two full ones (CPython's default: 10).
FULL_COLLECTION_EVERY = 100

CORS = {"allow_methods": ("GET", "POST"),
        "allow_headers": ("Authorization", "Content-Type", "X-Request-ID",
                          "Inference-Header-Content-Length"),
        "expose_headers": ("X-Request-ID", "Inference-Header-Content-Length")}


def create_app(settings: Settings | None = None, *, load_models: bool = True) -> FastAPI:
    """The app for `settings`; load_models=False leaves every model loading (tests of readiness)."""
    settings = settings or Settings.from_env()
    # Under --workers N every process counts its own requests: they share them through files
    # so that a scrape sees the same totals whichever worker answers it.
    metrics = ServerMetrics(SharedMetrics(settings.metrics_dir) if settings.metrics_dir else None)
    repo = ModelRepository(settings, metrics)
    # FastAPI's native OpenTelemetry asks the global providers on every request whether it is
    # enabled (a few us with none configured). Off unless asked for (SERVE_OPENTELEMETRY=true);
    # /metrics covers the basics.
    otel = settings.opentelemetry
    app = FastAPI(title="tinyship serve", version=SERVER_VERSION,
                  lifespan=_lifespan(repo, load_models),
                  description=docs.DESCRIPTION, openapi_tags=docs.TAGS,
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel},
                  docs_url=None, redoc_url=None)  # served offline by docs.router
    app.state.settings, app.state.repository, app.state.metrics = settings, repo, metrics
    boundary.install(app)

    # One router per protocol; the order is the matching order.
    _include(app, friendly.router(repo))
    _include(app, triton.router(repo, settings))  # before v2: /v2/models/stats is no model
    _include(app, v2.router(repo))
    _include(app, tfserving.router(repo))
    _include(app, ops.router(metrics))
    _include(app, docs.router(app.title))

    # Middleware added first runs innermost: the fast path sits inside CORS and the request
    # context, so it gets the same headers, auth, body limit and metrics as every route.
    if settings.fast_path:
        app.add_middleware(ClassifyFastPath, repository=repo)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), **CORS)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, known_models=repo.names,
                       api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       access_log=settings.access_log, activity=repo.activity)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from the environment."""
    return create_app(Settings.from_env())


def _include(app: FastAPI, router: APIRouter) -> None:
    """`app.include_router(router)`, flattened: the router's routes go into the app's own list.

    Since FastAPI 0.137 include_router keeps the router as a node that is matched again on
    every request, 20-50 us per request in process here (as much as a model). Routes in the
    app's list are matched as if declared on the app. They keep the settings of the router
    they were declared on, so `app.dependency_overrides` does not reach them (no route has
    dependencies).
    """
    app.router.routes.extend(router.routes)


def _lifespan(repo: ModelRepository, load_models: bool):
    async def load_then_freeze() -> None:
        await repo.load_all()
        # Everything alive now (libraries, sessions, the app) lives as long as the process.
        # Freezing it keeps it out of every later garbage collection: a full collection of
        # this heap takes tens of milliseconds, which would otherwise land in the p99.
        gc.collect()
        gc.freeze()
        # What is not frozen still gets traversed by every full collection: 5,000 open idle
        # connections made each one 20 ms (0.4 ms without), and CPython ran one every ~100
        # young collections, about one a second under load. Ten times fewer keep those pauses
        # out of the p99; young collections, which free the request garbage, are unchanged.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        # Then reload what changes on disk (selected.json, versions.json) until shutdown.
        await repo.watch()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = repo.settings
        # On uvicorn's loop, beside HTTP: same repository, same batchers.
        grpc_server = (await grpc_service.start(settings, repo, repo.metrics)
                       if settings.grpc_port else None)
        loader = asyncio.create_task(load_then_freeze()) if load_models else None
        sharer = (asyncio.create_task(repo.metrics.shared.keep_writing(repo.metrics))
                  if repo.metrics.shared else None)
        yield
        if sharer is not None:
            sharer.cancel()
        if grpc_server is not None:
            # Refuse new RPCs and let in-flight ones finish before the batchers drain.
            await grpc_server.stop(settings.graceful_timeout_s)
        if loader is not None and not loader.done():
            loader.cancel()
        await repo.close()
        if repo.metrics.shared:
            repo.metrics.shared.write(repo.metrics.snapshot())  # this worker's final counts
        log.info("server stopped: queued requests answered")

    return lifespan
