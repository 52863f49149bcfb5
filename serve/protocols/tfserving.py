"""TensorFlow Serving's REST API: model status and metadata, `:predict` (`instances` or `inputs`),
`:classify` (`examples` -> label/score pairs); `:regress` is refused (classifiers only).

Every route exists in TF Serving's three forms: `/v1/models/{name}` (status: every version;
metadata and inference: the default version, inference following the traffic split),
`/v1/models/{name}/versions/{version}` and `/v1/models/{name}/labels/{label}` (labels from
versions.json, serve.repository); only the first form is in /docs. `/v1/models/{name}` is TF
Serving's; the friendly model list is `/v1/models`. Bad input is answered 400 (TF Serving's
INVALID_ARGUMENT) with TF Serving's `error` key, plus our `code` and `expected`.
"""
from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve import dataplane, docs
from serve.errors import InvalidArgument, InvalidInput
from serve.repository import ModelRepository
from serve.responses import JSON, json_response

# The three spellings of "which model version" (the first is the default version).
BASES = ("/v1/models/{name}", "/v1/models/{name}/versions/{version}",
         "/v1/models/{name}/labels/{label}")


def router(repo: ModelRepository) -> APIRouter:
    r = APIRouter()

    def route(method: str, suffix: str, **documented):
        """Register a handler under the three forms of BASES + suffix; /docs shows the first."""
        def register(handler):
            for i, base in enumerate(BASES):
                r.add_api_route(base + suffix, handler, methods=[method], tags=["tfserving"],
                                include_in_schema=i == 0, **(documented if i == 0 else {}))
            return handler
        return register

    def model_for(request: Request, name: str, split: bool):
        # The version and label are read from the path by hand: declared, FastAPI would also
        # look for them in the query string of the plain form, and validate them per request.
        params = request.path_params
        return repo.get(name, params.get("version"), params.get("label"), split=split)

    async def decoded(decode, model, request: Request):
        try:
            return decode(model, await request.body())
        except InvalidInput as e:  # TF Serving answers bad input 400 INVALID_ARGUMENT
            raise InvalidArgument(e.message, e.expected) from None

    @route("GET", "", summary="Model status (every version, or the one in the path)",
           responses=docs.TFS_STATUS_RESPONSES)
    async def tfs_status(request: Request, name: str):
        params = request.path_params
        if "version" in params or "label" in params:
            models = [model_for(request, name, split=False)]
        else:
            models = repo.versions(name)
        return json_response(dataplane.tfserving_status(models))

    @route("GET", "/metadata", summary="Model metadata (signature_def)",
           responses=docs.TFS_METADATA_RESPONSES)
    async def tfs_metadata(request: Request, name: str):
        model = model_for(request, name, split=False)
        model.require_ready()
        return json_response(dataplane.tfserving_metadata(model))

    @route("POST", ":predict", summary="Predict", openapi_extra=docs.TFS_PREDICT_BODY,
           responses=docs.TFS_PREDICT_RESPONSES)
    async def tfs_predict(request: Request, name: str):
        model = model_for(request, name, split=True)
        model.require_ready()
        x, key = await decoded(dataplane.tfserving_decode, model, request)
        raw, _ = await repo.infer(model, x)
        return Response(orjson.dumps({key: raw.tolist()}), media_type=JSON)

    @route("POST", ":classify", summary="Classify: label/score pairs per example",
           openapi_extra=docs.TFS_CLASSIFY_BODY, responses=docs.TFS_CLASSIFY_RESPONSES)
    async def tfs_classify(request: Request, name: str):
        model = model_for(request, name, split=True)
        model.require_ready()
        x = await decoded(dataplane.tfserving_classify_decode, model, request)
        raw, _ = await repo.infer(model, x)
        return Response(dataplane.tfserving_classify_encode(model, model.probabilities(raw)),
                        media_type=JSON)

    @route("POST", ":regress", summary="Regress: refused, every model is a classifier",
           status_code=400, responses=docs.TFS_REGRESS_RESPONSES)
    async def tfs_regress(request: Request, name: str):
        model_for(request, name, split=False)  # an unknown model or version is still a 404
        raise InvalidArgument(f"model {name!r} is a classifier and has no regression signature",
                              expected=f"POST /v1/models/{name}:classify (labels and scores) "
                                       f"or :predict (the output tensor)")

    return r
