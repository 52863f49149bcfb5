"""Triton's HTTP extensions beyond inference: model configuration and statistics.

- `GET /v2/models/{name}[/versions/{v}]/config`: the model's Triton `ModelConfig` in JSON
  (`serve.triton_config.served_model_config`, the same dict `export-triton` writes as
  config.pbtxt), so `tritonclient`'s `get_model_config` and `perf_analyzer` work against serve;
- `GET /v2/models/stats`, `/v2/models/{name}[/versions/{v}]/stats`: Triton's statistics
  extension (`serve.statistics`, counted in `ModelRepository.infer`); without a version, every
  version of the model.

The classification extension lives in the data plane (`dataplane.v2_classification`), as it
changes what `/infer` answers. Included before the V2 router: `/v2/models/stats` must not be
read as the metadata of a model named "stats".
"""
from __future__ import annotations

from fastapi import APIRouter

from serve import docs
from serve.repository import ModelRepository
from serve.responses import json_response
from serve.settings import Settings
from serve.triton_config import served_model_config


_STAT = {"name": "fashion_mnist", "version": "1", "last_inference": 1764982800000,
         "inference_count": 120, "execution_count": 31,
         "inference_stats": {"success": {"count": 100, "ns": 41000000},
                             "fail": {"count": 0, "ns": 0},
                             "queue": {"count": 100, "ns": 9000000},
                             "compute_input": {"count": 100, "ns": 0},
                             "compute_infer": {"count": 100, "ns": 32000000},
                             "compute_output": {"count": 100, "ns": 0}}}
STATS_RESPONSES = docs._example({"model_stats": [_STAT]})
CONFIG_RESPONSES = docs._example({
    "name": "fashion_mnist", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
    "max_batch_size": 256,
    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [28, 28, 1]}],
    "output": [{"name": "probs", "data_type": "TYPE_FP32", "dims": [10],
                "label_filename": "labels.txt"}],
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    "dynamic_batching": {"preferred_batch_size": [32], "max_queue_delay_microseconds": 500,
                         "default_queue_policy": {"max_queue_size": 1024}}})


def router(repo: ModelRepository, settings: Settings) -> APIRouter:
    r = APIRouter()

    def _stats(models) -> dict:
        return {"model_stats": [repo.statistics.triton(m.name, m.version) for m in models]}

    @r.get("/v2/models/stats", tags=["v2"], summary="Inference statistics of every model "
           "(Triton's statistics extension)", responses=STATS_RESPONSES)
    async def all_stats():
        return json_response(_stats(m for name in repo.models for m in repo.versions(name)))

    @r.get("/v2/models/{name}/stats", tags=["v2"], summary="Inference statistics of a model "
           "(Triton's statistics extension)", responses=STATS_RESPONSES)
    @r.get("/v2/models/{name}/versions/{version}/stats", tags=["v2"], include_in_schema=False)
    async def model_stats(name: str, version: str | None = None):
        models = repo.versions(name) if version is None else [repo.get(name, version)]
        return json_response(_stats(models))

    @r.get("/v2/models/{name}/config", tags=["v2"], summary="Triton model configuration",
           responses=CONFIG_RESPONSES)
    @r.get("/v2/models/{name}/versions/{version}/config", tags=["v2"], include_in_schema=False)
    async def model_config(name: str, version: str | None = None):
        model = repo.get(name, version, split=False)
        model.require_ready()
        return json_response(served_model_config(model, settings))

    return r
