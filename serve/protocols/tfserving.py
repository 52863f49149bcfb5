"""TensorFlow Serving's REST API: model status and predict (`instances` or `inputs`).
`/v1/models/{name}` is TF Serving's; the friendly model list is `/v1/models`."""
from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve import dataplane, docs
from serve.errors import InvalidArgument, InvalidInput
from serve.repository import ModelRepository
from serve.responses import JSON, json_response


def router(repo: ModelRepository) -> APIRouter:
    r = APIRouter()

    @r.get("/v1/models/{name}", tags=["tfserving"], summary="Model status",
           responses=docs.TFS_STATUS_RESPONSES)
    async def tfs_status(name: str):
        return json_response(dataplane.tfserving_status(repo.get(name)))

    @r.post("/v1/models/{name}:predict", tags=["tfserving"], summary="Predict",
            openapi_extra=docs.TFS_PREDICT_BODY, responses=docs.TFS_PREDICT_RESPONSES)
    async def tfs_predict(request: Request, name: str):
        model = repo.get(name)
        model.require_ready()
        try:
            x, key = dataplane.tfserving_decode(model, await request.body())
        except InvalidInput as e:
            raise InvalidArgument(e.message, e.expected) from None
        raw, _ = await repo.infer(model, x)
        return Response(orjson.dumps({key: raw.tolist()}), media_type=JSON)

    return r
