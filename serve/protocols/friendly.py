"""The friendly API: raw inputs (pixels, an image, review text) in, human labels out; the demo
page and the model list."""
from __future__ import annotations

import asyncio

import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile

from serve import dataplane, docs
from serve.errors import InvalidInput
from serve.fastpath import classify_json
from serve.repository import ModelRepository
from serve.responses import JSON, json_response

DEMO_PAGE = Path(__file__).parent.parent / "static" / "index.html"


def router(repo: ModelRepository) -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def demo_page():
        return HTMLResponse(DEMO_PAGE.read_text())

    @r.post("/v1/classify/{task}", tags=["friendly"], summary="Top-k classes of an input",
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

    @r.get("/v1/models", tags=["friendly"], summary="Every model: state, variant, labels",
           responses=docs.MODELS_RESPONSES)
    async def list_models():
        return json_response({"models": repo.describe()})

    return r


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
    # Decoding takes milliseconds to a second: off the event loop, so other clients go on.
    return await asyncio.to_thread(dataplane.image_inputs, model, data, invert)
