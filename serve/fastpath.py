"""The hot path: JSON `POST /v1/classify/{task}` answered in plain ASGI, past FastAPI's router.

One Fashion image per request costs the server about 130 us of Python on this machine, of
which FastAPI's routing, request object and endpoint machinery are a third (in-process, no
sockets: 471-516 us per request through the whole app vs 294-321 us for the handler's own work,
measured while the machine was loaded; see serve/README.md). The model itself is 10-40 us.
So the one request shape that load is made of skips that machinery; everything else (uploads,
the standard protocols, docs) goes to FastAPI as before, and /docs still documents the route.

Both paths run the same `classify_json` (parse, validate, preprocess, batch, answer), and the
same outer middleware (request id, auth, body limit, metrics, CORS), so answers, errors and
metrics are identical; `SERVE_FAST_PATH=0` turns it off to compare.
"""
from __future__ import annotations

import asyncio
import time
from typing import NamedTuple
from urllib.parse import parse_qsl

import orjson

from serve import dataplane
from serve.errors import ServeError, http_status
from serve.middleware import send_json


PREFIX = "/v1/classify/"
ROUTE_PATH = "/v1/classify/{task}"  # the FastAPI route this stands in for (metrics label)


class _Route(NamedTuple):
    """What the metrics middleware reads from scope["route"] (FastAPI puts its route there)."""

    path: str


_ROUTE = _Route(ROUTE_PATH)


async def classify_json(repo, task: str, query, body: bytes, size_checked: bool = False) -> bytes:
    """The whole JSON classify request: `query` is a mapping of query parameters; returns the
    answer's bytes or raises a `serve.errors` error. `size_checked`: the body went through
    `dataplane.friendly_size_check` as it arrived."""
    start = time.perf_counter()
    k, invert = dataplane.classify_params(query)
    model = repo.get(task)
    model.require_ready()
    if b'"image_base64"' in body:  # decoding an image: off the event loop (pixels stay on it)
        x, single = await asyncio.to_thread(dataplane.friendly_json_inputs, model, body, invert,
                                            size_checked)
    else:
        x, single = dataplane.friendly_json_inputs(model, body, invert, size_checked)
    raw, timing = await repo.infer(model, x)
    timing["total"] = round((time.perf_counter() - start) * 1e3, 3)
    return dataplane.classify_answer(model, model.probabilities(raw), k, single, timing)


class ClassifyFastPath:
    """Pure-ASGI middleware: takes JSON classify requests, passes everything else on."""

    def __init__(self, app, *, repository):
        self.app = app
        self.repo = repository

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not scope["path"].startswith(PREFIX)):
            return await self.app(scope, receive, send)
        task = scope["path"][len(PREFIX):]
        if not task or "/" in task or self._is_multipart(scope):
            return await self.app(scope, receive, send)  # FastAPI: 404, 405 or the upload form
        scope["route"], scope["path_params"] = _ROUTE, {"task": task}
        status, headers = 200, None
        try:
            read = await self._read_body(receive, task)
            if read is None:
                return  # the client went away before sending its request
            body, size_checked = read
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"),
                                   keep_blank_values=True))
            payload = await classify_json(self.repo, task, query, body, size_checked)
        except ServeError as e:
            status, payload, headers = http_status(e), orjson.dumps(e.as_dict()), e.headers
        # Anything else (a bug) is answered by serve.middleware, the boundary around every route.
        await send_json(send, status, payload, headers)

    @staticmethod
    def _is_multipart(scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"content-type":
                return value.startswith(b"multipart/")
        return False

    async def _read_body(self, receive, task: str) -> tuple[bytes, bool] | None:
        """(The body, whether it was size-checked); None if the client left. A body that
        comes in several reads is size-checked read by read
        (`dataplane.friendly_size_check`): an 8 MB body of a million short texts is refused
        before it is all read, and no single count of it holds the event loop."""
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body, False  # nearly every request: one read, nothing else to do
        chunks, check = [body], self._size_check(task)
        try:
            while True:
                if check is not None:
                    check.feed(chunks[-1])
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    if check is not None:
                        check.feed(chunks[-1])
                    return b"".join(chunks), check is not None
        except ServeError:
            while message.get("more_body", False):  # read the rest so the client gets the 413
                message = await receive()
            raise

    def _size_check(self, task: str):
        try:
            model = self.repo.get(task, split=False)
        except ServeError:
            return None  # an unknown task: classify_json answers it
        return dataplane.friendly_size_check(model)
