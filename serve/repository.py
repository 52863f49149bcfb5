"""The model repository: task name -> served model (+ its batcher), loaded in the background.

The server starts listening at once; `load_all()` then loads the models one by one in a worker
thread, so health endpoints answer while sessions are built and warmed up. The server is
ready when loading is over and at least one model is ready: a corrupt model makes its own
endpoints answer 503 with the reason and leaves the others serving.
"""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from serve.batching import ClientActivity, DynamicBatcher
from serve.errors import UnknownModel
from serve.metrics import ServerMetrics
from serve.model import ServedModel
from serve.settings import Settings
from core.userdata import served_tasks

log = logging.getLogger("serve.repository")


class ModelRepository:
    def __init__(self, settings: Settings, metrics: ServerMetrics, tasks=None,
                 activity: ClientActivity | None = None):
        """Serve `tasks` (default: the built-in served tasks and the user tasks imported into
        the artifact root)."""
        tasks = served_tasks(settings.artifacts) if tasks is None else tasks
        self.settings = settings
        self.metrics = metrics
        # Who has sent requests lately; the request middleware feeds it (see serve.batching).
        self.activity = activity or ClientActivity()
        warmup = (1, settings.max_batch_size) if settings.batching else (1,)
        self.models = {t: ServedModel(t, settings.artifacts, settings.providers,
                                      settings.session_threads, warmup,
                                      max_rows=settings.max_request_rows) for t in tasks}
        self.batchers: dict[str, DynamicBatcher] = {}
        self._observe_queue_time = {t: metrics.queue_time_observer(t) for t in tasks}
        metrics.queue_depth_source = lambda: {n: b.queue_depth for n, b in self.batchers.items()}
        self.loading_done = False
        for t in self.models:
            metrics.set_model_state(t, "loading")

    @property
    def ready(self) -> bool:
        return self.loading_done and any(m.ready for m in self.models.values())

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"unknown model {name!r}",
                               expected=f"one of {', '.join(sorted(self.models))}")
        return model

    async def load_all(self) -> None:
        for name, model in self.models.items():
            await asyncio.to_thread(model.load)
            self.metrics.set_model_state(name, model.state.value)
            if model.ready:
                self.metrics.set_model_info(name, variant=model.variant.name,
                                            runtime=model.runtime, provider=model.provider,
                                            placement=model.placement)
            if model.ready and self.settings.batching:
                batcher = DynamicBatcher(
                    name, model.predict, max_batch_size=self.settings.max_batch_size,
                    max_queue_delay_us=self.settings.max_queue_delay_us,
                    max_queue_size=self.settings.max_queue_size,
                    on_batch=self.metrics.batch_observer(name), alone=self.activity.alone)
                self.batchers[name] = batcher
        self.loading_done = True
        failed = {n: m.error for n, m in self.models.items() if m.error}
        log.info("models loaded: %s ready, %s failed%s",
                 sum(m.ready for m in self.models.values()), len(failed),
                 "".join(f"; {n}: {e}" for n, e in failed.items()))

    async def infer(self, model: ServedModel, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Raw outputs for model inputs, through the batcher when batching is on."""
        batcher = self.batchers.get(model.name)
        if batcher is None:
            start = time.perf_counter()
            out = model.predict(x)
            infer_ms = (time.perf_counter() - start) * 1e3
            return out, {"queue": 0.0, "inference": round(infer_ms, 3), "batch_rows": len(x)}
        result = await batcher.submit(x)
        self._observe_queue_time[model.name](result.queue_seconds)
        return result.outputs, {"queue": round(result.queue_seconds * 1e3, 3),
                                "inference": round(result.infer_seconds * 1e3, 3),
                                "batch_rows": result.batch_rows}

    async def close(self) -> None:
        """Finish every queued request, then stop the batchers."""
        for batcher in self.batchers.values():
            await batcher.close()
