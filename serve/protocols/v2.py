"""The Open Inference Protocol (KServe V2, Triton's HTTP API): server metadata and health,
model metadata and readiness, inference in JSON or with the binary tensor data extension.
The `/versions/{version}` forms address one version of a model (serve.repository: versions.json,
or version "1" = the selected variant); the plain forms use the default version for metadata and
readiness and the traffic split for inference. The versioned forms stay out of /docs. The
repository extension (`/v2/repository/...`: index, load, unload) is Triton's."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve import dataplane, docs
from serve.errors import InvalidArgument, InvalidInput
from serve.repository import ModelRepository
from serve.responses import JSON, json_response


def router(repo: ModelRepository) -> APIRouter:
    r = APIRouter()

    def _v2_model(name: str, version: str | None, split: bool = False):
        # Metadata and readiness of the plain path describe the default version; inference on
        # it follows the traffic split (split=True).
        return repo.get(name, version, split=split)

    @r.get("/v2", tags=["v2"], summary="Server metadata", responses=docs.SERVER_RESPONSES)
    async def v2_server():
        return json_response(dataplane.v2_server_metadata())

    @r.get("/v2/health/live", tags=["v2"], summary="Liveness (the process answers)",
           responses=docs.LIVE_RESPONSES)
    async def v2_live():
        return json_response({"live": True})

    @r.get("/v2/health/ready", tags=["v2"],
           summary="Readiness: loading finished and at least one model warm",
           responses=docs.READY_RESPONSES)
    async def v2_ready():
        return json_response({"ready": repo.ready}, 200 if repo.ready else 503)

    @r.get("/v2/models/{name}", tags=["v2"], summary="Model metadata (tensors)",
           responses=docs.V2_METADATA_RESPONSES)
    @r.get("/v2/models/{name}/versions/{version}", tags=["v2"], include_in_schema=False)
    async def v2_metadata(name: str, version: str | None = None):
        model = _v2_model(name, version)
        model.require_ready()
        return json_response(dataplane.v2_model_metadata(model, repo.versions(name)))

    @r.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness",
           responses=docs.V2_READY_RESPONSES)
    @r.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], include_in_schema=False)
    async def v2_model_ready(name: str, version: str | None = None):
        model = _v2_model(name, version)
        body = {"name": name, "ready": model.ready}
        if model.error:
            body["error"] = model.error
        return json_response(body, 200 if model.ready else 503)

    @r.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference (JSON or binary tensors)",
            openapi_extra=docs.V2_INFER_BODY, responses=docs.V2_INFER_RESPONSES)
    @r.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], include_in_schema=False)
    async def v2_infer(request: Request, name: str, version: str | None = None):
        model = _v2_model(name, version, split=True)
        model.require_ready()
        header = request.headers.get("inference-header-content-length")
        # ASCII digits, and not so many that int() refuses them (> 4300) or no body could match.
        if header is not None and not (header.isascii() and header.isdigit() and len(header) <= 12):
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

    # -- Triton's model repository extension -------------------------------------------------
    @r.post("/v2/repository/index", tags=["v2"],
            summary="Repository index: every model version, its state and why",
            responses=docs.REPOSITORY_INDEX_RESPONSES)
    async def repository_index(request: Request):
        doc = _repository_request(await request.body(), {"ready"})
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument(f"ready is {ready!r}", expected="true or false")
        return json_response(repo.index(ready=ready))

    @r.post("/v2/repository/models/{name}/load", tags=["v2"],
            responses=docs.REPOSITORY_CHANGE_RESPONSES,
            summary="Load or reload a model from its declaration, without a restart")
    async def repository_load(request: Request, name: str):
        params = _repository_parameters(await request.body())
        if "config" in params:
            raise InvalidArgument("parameter 'config' is not supported",
                               expected="no config: a model's versions come from "
                                        f"{name}/versions.json or {name}/selected.json")
        await repo.load(name)
        return Response(status_code=200)

    @r.post("/v2/repository/models/{name}/unload", tags=["v2"],
            responses=docs.REPOSITORY_CHANGE_RESPONSES,
            summary="Unload a model: its endpoints answer 404 until it is loaded again")
    async def repository_unload(request: Request, name: str):
        # unload_dependents: no model here has dependents (no ensembles), so it changes nothing.
        _repository_parameters(await request.body())
        await repo.unload(name)
        return Response(status_code=200)

    return r


def _repository_request(body: bytes, fields: set[str]) -> dict:
    """A repository extension request body: empty, or a JSON object of the given fields."""
    if not body.strip():
        return {}
    doc = dataplane.parse_json(body)
    unknown = sorted(set(doc) - fields)
    if unknown:
        raise InvalidArgument(f"unknown field {unknown[0]!r}",
                           expected=f"an object with {', '.join(sorted(fields))} (all optional)")
    return doc


def _repository_parameters(body: bytes) -> dict:
    """The `parameters` object of a load or unload request ({} without one)."""
    params = _repository_request(body, {"parameters"}).get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument(f"parameters is a JSON {type(params).__name__}",
                           expected="an object of parameter name -> value")
    return params
