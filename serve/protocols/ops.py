"""Operations: Prometheus metrics (health probes are the V2 protocol's, in `v2`)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serve import docs
from serve.metrics import ServerMetrics


def router(metrics: ServerMetrics) -> APIRouter:
    r = APIRouter()

    @r.get("/metrics", tags=["operations"], summary="Prometheus metrics",
           responses=docs.METRICS_RESPONSES)
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    return r
