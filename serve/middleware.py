"""One pure-ASGI middleware for what every request needs: request id, auth, body limit,
metrics and the access log. Pure ASGI (not Starlette's BaseHTTPMiddleware) because that
runs each request in an extra task and costs a third of the throughput of a 9 us model.
"""
from __future__ import annotations

import hmac
import itertools
import logging
import os
import time

import orjson

from serve.errors import BodyTooLarge, ServeError, Unauthorized, http_status
from serve.logs import request_id
from serve.metrics import ServerMetrics

log = logging.getLogger("serve.access")

# Paths that never need the API key: probes (a load balancer has no token) and static pages
# that carry no model data (the demo page asks the user for the key and sends it itself).
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/", "/docs", "/openapi.json"})
MAX_REQUEST_ID = 128


async def send_json(send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """A whole JSON response in plain ASGI (this middleware's refusals, serve.fastpath)."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app, *, metrics: ServerMetrics, known_models, api_key: str = "",
                 max_body_bytes: int, access_log: bool = False, activity=None):
        self.app = app
        self.metrics = metrics
        self.activity = activity  # serve.batching.ClientActivity: who sends requests lately
        self.known_models = frozenset(known_models)
        self.expected_auth = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        # Cheap unique ids: process id + counter (uuid4 costs more than the model).
        self._ids = (f"{os.getpid():x}-{n:x}" for n in itertools.count(1))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        rid = auth = length = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:MAX_REQUEST_ID]
            elif key == b"authorization":
                auth = value
            elif key == b"content-length":
                length = value
        rid = rid or next(self._ids)
        token = request_id.set(rid)
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        self.metrics.in_flight += 1
        if self.activity is not None:
            self.activity.saw(scope.get("client"), start)
        try:
            error = self._refuse(scope, auth, length)
            if error is not None:
                await self._send_error(send_with_id, error)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        finally:
            self.metrics.in_flight -= 1
            self._record(scope, status, time.perf_counter() - start, rid)
            request_id.reset(token)

    def _refuse(self, scope, auth: bytes | None, length: bytes | None) -> ServeError | None:
        # CORS preflights (OPTIONS) carry no credentials by design.
        if (self.expected_auth is not None and scope["path"] not in PUBLIC_PATHS
                and scope["method"] != "OPTIONS"):
            if auth is None:
                return Unauthorized("this server needs an API key")
            if not hmac.compare_digest(auth, self.expected_auth):
                return Unauthorized("the API key is wrong")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return BodyTooLarge(f"Content-Length {length!r} is not a number")
            if n > self.max_body_bytes:
                return self._too_large(n)
        return None

    def _too_large(self, n: int) -> BodyTooLarge:
        return BodyTooLarge(f"the request body has {n:,} bytes or more",
                            expected=f"at most {self.max_body_bytes:,} bytes "
                            "(SERVE_MAX_BODY_BYTES / --max-body-bytes)")

    def _limited(self, receive):
        """Count streamed (chunked) bodies too; the route's body read raises BodyTooLarge."""
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large(received)
            return message
        return limited_receive

    @staticmethod
    async def _send_error(send, error: ServeError) -> None:
        await send_json(send, http_status(error), orjson.dumps(error.as_dict()), error.headers)

    def _record(self, scope, status: int, seconds: float, rid: str) -> None:
        route = scope.get("route")
        route_path = route.path if route is not None else "unmatched"
        params = scope.get("path_params") or {}
        model = params.get("task") or params.get("name") or "-"
        if model not in self.known_models:  # bounded label values, whatever clients send
            model = "-"
        self.metrics.observe_request(model, route_path, status, seconds)
        # Server faults are always logged; 503 (loading, failed model, full queue) is a state
        # that /metrics and the health probes report, and would flood the log under overload.
        if self.access_log or (status >= 500 and status != 503):
            log.log(logging.ERROR if status >= 500 else logging.INFO, "request",
                    extra={"fields": {"method": scope["method"], "path": scope["path"],
                                      "status": status, "ms": round(seconds * 1e3, 3),
                                      "model": model}})
