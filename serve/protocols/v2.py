"""The Open Inference Protocol (KServe V2, Triton's HTTP API): server metadata and health,
model metadata and readiness, inference in JSON or with the binary tensor data extension.
Each model has the one version `dataplane.PROTOCOL_VERSION`; the `/versions/{version}` forms
answer the same as the plain ones and stay out of /docs."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve import dataplane, docs
from serve.errors import InvalidInput
from serve.repository import ModelRepository
from serve.responses import JSON, SERVER_NAME, SERVER_VERSION, json_response


def router(repo: ModelRepository) -> APIRouter:
    r = APIRouter()

    def _v2_model(name: str, version: str):
        model = repo.get(name)
        if version != dataplane.PROTOCOL_VERSION:
            raise dataplane.UnknownVersion(name, version)
        return model

    @r.get("/v2", tags=["v2"], summary="Server metadata", responses=docs.SERVER_RESPONSES)
    async def v2_server():
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION,
                              "extensions": ["binary_tensor_data"]})

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
    async def v2_metadata(name: str, version: str = dataplane.PROTOCOL_VERSION):
        model = _v2_model(name, version)
        model.require_ready()
        return json_response(dataplane.v2_model_metadata(model))

    @r.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness",
           responses=docs.V2_READY_RESPONSES)
    @r.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], include_in_schema=False)
    async def v2_model_ready(name: str, version: str = dataplane.PROTOCOL_VERSION):
        model = _v2_model(name, version)
        body = {"name": name, "ready": model.ready}
        if model.error:
            body["error"] = model.error
        return json_response(body, 200 if model.ready else 503)

    @r.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference (JSON or binary tensors)",
            openapi_extra=docs.V2_INFER_BODY, responses=docs.V2_INFER_RESPONSES)
    @r.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], include_in_schema=False)
    async def v2_infer(request: Request, name: str, version: str = dataplane.PROTOCOL_VERSION):
        model = _v2_model(name, version)
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

    return r
