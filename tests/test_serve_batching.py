"""The dynamic batcher: merges concurrent requests, keeps answers matched, never waits alone."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from serve.app import create_app
from serve.batching import ClientActivity, DynamicBatcher
from serve.errors import Overloaded
from serve.fixtures import write_fixture_artifacts
from serve.settings import Settings
from core.artifacts import selected_variant
from core.runtime import variant_session


class RecordingModel:
    """Identity-like model: row i's output is its own id, so mix-ups are visible."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        return x * 10


def batcher(model, **kw):
    settings = dict(max_batch_size=8, max_queue_delay_us=2000, max_queue_size=100)
    settings.update(kw)
    return DynamicBatcher("m", model, **settings)


def test_concurrent_requests_are_merged_and_answers_stay_matched():
    model = RecordingModel()

    async def main():
        b = batcher(model)
        rows = [np.full((1 + i % 3, 2), i, np.float32) for i in range(20)]
        results = await asyncio.gather(*(b.submit(r) for r in rows))
        await b.close()
        return rows, results

    rows, results = asyncio.run(main())
    for r, res in zip(rows, results):
        np.testing.assert_array_equal(res.outputs, r * 10)
    assert sum(model.batches) == sum(len(r) for r in rows)
    assert max(model.batches) > 1 and all(n <= 8 for n in model.batches)


def test_a_lone_request_runs_at_once_without_waiting_for_the_delay():
    model = RecordingModel()

    async def main():
        b = batcher(model, max_queue_delay_us=5_000_000)  # 5 s: a wait would be obvious
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(5):
            res = await b.submit(np.full((1, 2), i, np.float32))
            assert res.batch_rows == 1
        return loop.time() - start

    assert asyncio.run(main()) < 0.5
    assert model.batches == [1] * 5


def test_a_client_alone_runs_inline_and_a_second_client_brings_batching_back():
    activity = ClientActivity(window_s=0.05)
    a, b = ("10.0.0.1", 5000), ("10.0.0.2", 6000)
    activity.saw(a, 0.0)
    assert not activity.alone(0.01)  # the first request: who else is there is not known yet
    activity.saw(a, 1.0)
    assert activity.alone(1.0)       # the same connection, one request after another
    activity.saw(b, 1.1)
    assert not activity.alone(1.1)   # another client: batching for the next 50 ms
    assert activity.alone(1.2)
    activity.saw(None, 2.0)          # an unknown client never counts as alone
    assert not activity.alone(2.01)

    model = RecordingModel()
    observed = []
    alone = [True]

    async def main():
        b = batcher(model, on_batch=lambda rows, s: observed.append(rows),
                    alone=lambda: alone[0])
        inline = await b.submit(np.full((2, 2), 7, np.float32))
        alone[0] = False
        merged = await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32))
                                        for i in range(4)))
        return inline, merged

    inline, merged = asyncio.run(main())
    assert inline.queue_seconds == 0.0 and inline.batch_rows == 2
    np.testing.assert_array_equal(inline.outputs, np.full((2, 2), 70, np.float32))
    assert [r.batch_rows for r in merged] == [4] * 4  # not alone: merged as before
    assert model.batches == [2, 4] and observed == [2, 4]  # both reach the metrics


def test_a_request_larger_than_max_batch_runs_alone_unsplit():
    model = RecordingModel()

    async def main():
        b = batcher(model, max_batch_size=4)
        big, small = np.ones((10, 2), np.float32), np.zeros((1, 2), np.float32)
        return await asyncio.gather(b.submit(big), b.submit(small))

    big, small = asyncio.run(main())
    assert big.outputs.shape == (10, 2) and small.outputs.shape == (1, 2)
    assert sorted(model.batches) == [1, 10]


def test_full_queue_is_refused_with_retry_after():
    async def main():
        b = batcher(RecordingModel(), max_queue_size=3)
        tasks = [asyncio.ensure_future(b.submit(np.zeros((1, 2), np.float32))) for _ in range(5)]
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(main())
    refused = [d for d in done if isinstance(d, Overloaded)]
    assert len(refused) == 2 and refused[0].headers == {"Retry-After": "1"}


def test_close_answers_every_queued_request_then_refuses_new_ones():
    model = RecordingModel()

    async def main():
        b = batcher(model)
        pending = [asyncio.ensure_future(b.submit(np.full((1, 2), i, np.float32)))
                   for i in range(6)]
        await asyncio.sleep(0)  # queued, not yet run
        await b.close()
        answers = [p.result() for p in pending]
        with pytest.raises(Overloaded):
            await b.submit(np.zeros((1, 2), np.float32))
        return answers

    answers = asyncio.run(main())
    assert [a.outputs[0, 0] for a in answers] == [i * 10 for i in range(6)]


def test_server_merges_concurrent_http_requests_and_matches_answers(tmp_path):
    root = write_fixture_artifacts(tmp_path)
    app = create_app(Settings(artifacts=root, providers=("cpu",), threads=1))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (48, 28, 28))
    variant = selected_variant(root, "fashion_mnist")
    session = variant_session(variant, providers=("cpu",))
    expected = session.run(None, {"input": variant.preprocessor()(images)})[0].argmax(1)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            while not app.state.repository.loading_done:
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                rs = await asyncio.gather(*(c.post("/v1/classify/fashion_mnist?k=1",
                                                   json={"pixels": img.tolist()})
                                            for img in images))
                metrics = (await c.get("/metrics")).text
        return rs, metrics

    responses, metrics = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["top_k"][0]["class_id"] for r in responses] == expected.tolist()
    assert max(r.json()["timing_ms"]["batch_rows"] for r in responses) > 1
    count = [line for line in metrics.splitlines()
             if line.startswith('tinyship_batch_size_count{model="fashion_mnist"}')]
    assert count and float(count[0].split()[-1]) < 48  # fewer inferences than requests


def test_server_answers_503_with_retry_after_when_the_queue_is_full(tmp_path):
    root = write_fixture_artifacts(tmp_path)
    app = create_app(Settings(artifacts=root, providers=("cpu",), threads=1, max_queue_size=2))
    body = {"pixels": np.zeros((28, 28), int).tolist()}

    async def main():
        async with app.router.lifespan_context(app):
            while not app.state.repository.loading_done:
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(*(c.post("/v1/classify/fashion_mnist", json=body)
                                              for _ in range(30)))

    responses = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "max_queue_size" in refused.json()["error"]
