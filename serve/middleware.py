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

from serve.connection import BODY_TIMED_OUT
from serve.docs import DOCS_ASSETS, DOCS_ASSETS_PATH
from serve.errors import BodyTooLarge, ServeError, Unauthorized, http_status
from serve.logs import request_id
from serve.metrics import ServerMetrics

log = logging.getLogger("serve.access")
app_log = logging.getLogger("serve.app")  # the server's own log, as in serve.boundary

# Paths that never need the API key: probes (a load balancer has no token) and static pages
# that carry no model data (the demo page asks the user for the key and sends it itself).
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/", "/docs", "/redoc",
                          "/openapi.json", *(f"{DOCS_ASSETS_PATH}/{name}" for name in DOCS_ASSETS)})
MAX_REQUEST_ID = 128
# Statuses recorded for requests that got no answer, as nginx logs them: the client closed the
# connection (499), or stalled sending its body until the server closed it (408).
CLIENT_GONE, CLIENT_TIMED_OUT = 499, 408
# A refused body is read and dropped up to this many times the body limit before answering.
DRAIN_FACTOR = 8


class _Client:
    __slots__ = ("gone",)

    def __init__(self):
        self.gone = False  # the client disconnected before the answer


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
        self.drain_bytes = DRAIN_FACTOR * max_body_bytes
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
        status = None
        client = _Client()

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
                await self._refuse_after_draining(receive, send_with_id, error, length)
            else:
                await self.app(scope, self._limited(receive, client), send_with_id)
        except Exception as e:  # noqa: BLE001  the one boundary for what the routes let through
            if not client.gone:
                # A bug: JSON with the request id, and the connection stays usable (an
                # exception escaping to uvicorn would make it close the connection).
                app_log.error("unhandled error on %s %s", scope["method"], scope["path"],
                              exc_info=e)
                if status is None:
                    await send_json(send_with_id, 500, orjson.dumps(
                        {"error": f"internal error ({type(e).__name__})", "code": "internal"}))
        finally:
            if status is None:
                # No answer went out: the client left, or stalled until the server gave up.
                status = CLIENT_TIMED_OUT if scope.get(BODY_TIMED_OUT) else CLIENT_GONE
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

    def _limited(self, receive, client: "_Client"):
        """Count streamed (chunked) bodies too: past the limit, drain what may still come (so
        the client reads the 413 instead of a reset) and raise BodyTooLarge to the route's
        body read. Notes a disconnect, whatever the route then does with it."""
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    error = self._too_large(received)
                    if message.get("more_body", False) and not await self._drain(receive,
                                                                                  received):
                        error.headers["Connection"] = "close"
                    raise error
            elif message["type"] == "http.disconnect":
                client.gone = True
            return message
        return limited_receive

    async def _drain(self, receive, received: int = 0) -> bool:
        """Read and drop the rest of a refused body, up to `drain_bytes`; False if more remains
        (the answer then closes the connection). The protocol's body timeout bounds the time."""
        while received <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    async def _refuse_after_draining(self, receive, send, error: ServeError,
                                     length: bytes | None) -> None:
        """Answer a refused request once its body is read (up to a bound): a client that sends
        its whole body before reading (urllib, and any client with `Connection: close`) would
        otherwise see the connection reset instead of the answer. A body announced beyond the
        bound is not read at all."""
        if length is not None and length.isdigit() and int(length) > self.drain_bytes:
            drained = False
        else:
            drained = await self._drain(receive)
        if not drained:
            error.headers = {**error.headers, "Connection": "close"}
        await self._send_error(send, error)

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
