"""The HTTP connection layer: uvicorn's httptools protocol with the limits a public server needs.

uvicorn times out only idle keep-alive connections: a client that opens connections and never
finishes its headers, or sends a Content-Length larger than its body, holds a connection (and
a file descriptor) for ever, and enough of them lock every other client out, health probes
included. `GuardedHttpProtocol` adds, per connection, what nginx calls client_header_timeout
and client_body_timeout, and a cap on open connections that closes idle ones to make room:
first those that never sent a request, then keep-alive ones, longest idle first (an idle
connection closed costs its client a reconnect; refusing a new one would cost a request).
Everything it answers itself is JSON like the app's errors.

Timers are one `call_later` per request head and body (about a microsecond each): the hot path
pays nothing else. `ServeConfig` is uvicorn's Config with these limits attached, so worker
processes (spawned with a pickled config) get them too.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import resource
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serve.settings import Settings

log = logging.getLogger("serve.connection")

# Set on the request's ASGI scope when the protocol gave up waiting for the body, so the
# request middleware records 408 (not a client disconnect) for the request it was serving.
BODY_TIMED_OUT = "tinyship.body_timed_out"

# Why connections were closed by the server, for /metrics (serve.metrics reads it at scrape time).
CLOSED: Counter[str] = Counter()


@dataclass(frozen=True)
class ConnectionLimits:
    """Per process; the defaults and their reasons are in serve.settings.Settings."""

    max_connections: int   # open connections; beyond it the longest-idle are closed
    header_timeout_s: float  # from connection (or a request's first byte) to its full head
    body_timeout_s: float    # from the head to the last byte of the body
    keep_alive_s: float      # idle time between requests on one connection

    @classmethod
    def from_settings(cls, settings) -> "ConnectionLimits":
        return cls(max_connections=settings.max_connections,
                   header_timeout_s=settings.header_timeout_s,
                   body_timeout_s=settings.body_timeout_s,
                   keep_alive_s=settings.keep_alive_s)


class ServeConfig(uvicorn.Config):
    """uvicorn's Config, serving with `GuardedHttpProtocol` under `limits`."""

    def __init__(self, app, *, limits: ConnectionLimits, **kwargs):
        # The accept queue as deep as the cap (the kernel bounds it by net.core.somaxconn): a
        # burst of connects beyond it has SYNs dropped, and every client in it, health probes
        # included, waits a one-second SYN retransmit.
        kwargs.setdefault("backlog", max(2048, limits.max_connections))
        super().__init__(app, http=GuardedHttpProtocol, timeout_keep_alive=limits.keep_alive_s,
                         **kwargs)
        self.limits = limits


def fit_file_limit(limits: ConnectionLimits, listeners: int = 1,
                   spare: int = 256) -> ConnectionLimits:
    """Raise the process's file limit to hold max_connections sockets per listener (HTTP, and
    gRPC when on: each caps its connections at max_connections) plus `spare` other files
    (models, logs, ORT's threads); where the hard limit is lower, lower the cap to fit it, so
    that connections are closed by the cap's rules instead of failing at accept()."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = listeners * limits.max_connections + spare
    if hard != resource.RLIM_INFINITY and want > hard:
        fitted = max(1, (hard - spare) // listeners)
        log.warning("max_connections %d needs %d file descriptors but the hard limit is %d: "
                    "serving with max_connections %d", limits.max_connections, want, hard,
                    fitted)
        limits, want = dataclasses.replace(limits, max_connections=fitted), hard
    if soft != resource.RLIM_INFINITY and want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return limits


def _response(status: int, reason: str, error: str, code: str, expected: str | None = None,
              extra: bytes = b"") -> bytes:
    body = {"error": error, "code": code}
    if expected:
        body["expected"] = expected
    payload = orjson.dumps(body)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (status, reason.encode(), len(payload), extra)
            + payload)


BAD_HTTP = _response(400, "Bad Request", "the request is not valid HTTP/1.1", "bad_http",
                     "an HTTP/1.1 request line, headers and a body matching Content-Length")
HEADER_TIMEOUT = _response(408, "Request Timeout", "the request head did not arrive in time",
                           "request_timeout", "the full request head within "
                           "SERVE_HEADER_TIMEOUT_S seconds")
BODY_TIMEOUT = _response(408, "Request Timeout", "the request body did not arrive in time",
                         "request_timeout", "the body announced by Content-Length within "
                         "SERVE_BODY_TIMEOUT_S seconds of the request head")
TOO_MANY_CONNECTIONS = _response(503, "Service Unavailable", "the server has too many open "
                                 "connections, all busy", "too_many_connections",
                                 "retry shortly", b"retry-after: 1\r\n")


class _Idle:
    """A server's idle connections, in two queues, longest idle first in each: `fresh` ones
    have not sent a request yet (what an idle-connection flood is made of), `kept` ones are
    keep-alive connections between requests (real clients, which will send again). The cap
    closes fresh ones first, so a flood evicts itself before it reaches the clients."""

    def __init__(self):
        self.fresh: OrderedDict[int, GuardedHttpProtocol] = OrderedDict()
        self.kept: OrderedDict[int, GuardedHttpProtocol] = OrderedDict()

    def add(self, protocol: "GuardedHttpProtocol", fresh: bool) -> None:
        self.discard(protocol)
        (self.fresh if fresh else self.kept)[id(protocol)] = protocol

    def discard(self, protocol: "GuardedHttpProtocol") -> None:
        self.fresh.pop(id(protocol), None)
        self.kept.pop(id(protocol), None)

    def close_oldest(self) -> bool:
        for queue in (self.fresh, self.kept):
            while queue:
                _, protocol = queue.popitem(last=False)
                if not protocol.transport.is_closing():
                    protocol.transport.close()
                    CLOSED["evicted_idle"] += 1
                    return True
        return False


_IDLE: "weakref.WeakKeyDictionary[object, _Idle]" = weakref.WeakKeyDictionary()


def open_connections() -> int:
    """Open connections of every server in this process (uvicorn's ServerState keeps them)."""
    return sum(len(state.connections) for state in list(_IDLE))


class GuardedHttpProtocol(HttpToolsProtocol):
    """Where a request stands is read from uvicorn's own state after each read (`_phase`),
    rather than from parser callbacks: each overridden callback costs a Python frame on every
    request, and this layer must stay within a few percent of a ~120 us request."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = (getattr(config, "limits", None)
                                         or ConnectionLimits.from_settings(Settings()))
        self.idle = _IDLE.setdefault(server_state, _Idle())
        self._deadline: asyncio.TimerHandle | None = None
        # What the running timer waits for: the connection itself (no request yet), a request
        # scope (its head is incomplete) or a request cycle (its body is incomplete).
        self._phase = None
        self._idle = False  # in self.idle

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self.idle.close_oldest():
            CLOSED["refused"] += 1
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self.idle.add(self, fresh=True)
        self._idle = True
        self._phase = self
        # Spread over 1-1.5x the timeout: connections opened in one burst (a flood, or clients
        # reconnecting together) would otherwise all be closed, and reconnect, at once.
        self._deadline = self.loop.call_later(
            self.limits.header_timeout_s * (1 + random.random() / 2), self._head_timed_out)

    def connection_lost(self, exc) -> None:
        self.idle.discard(self)
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer is plain text quoting the parser; clients of this server get JSON.
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(BAD_HTTP)
            self.transport.close()

    # -- request head and body -------------------------------------------------------------
    # A timer runs only while a head or a body is incomplete at the end of a read: nearly every
    # request arrives whole in one read and costs no timer at all (a call_later and its cancel
    # are a microsecond, about 1% of a request here).
    def data_received(self, data: bytes) -> None:
        if self._idle:
            self.idle.discard(self)
            self._idle = False
        super().data_received(data)
        scope, cycle = self.scope, self.cycle
        if scope is not None and "method" not in scope:  # uvicorn sets it when the head is in
            phase = scope
        elif cycle is not None and cycle.more_body and cycle.scope is scope:
            phase = cycle
        else:
            phase = None
        if phase is not self._phase:
            self._disarm()
            self._phase = phase
            if phase is not None and not self.transport.is_closing():
                self._deadline = (
                    self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)
                    if phase is scope else
                    self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self.idle.add(self, fresh=False)
            self._idle = True

    # -- timers ----------------------------------------------------------------------------
    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        CLOSED["header_timeout"] += 1
        # A connection that never started a request is closed silently (a pooled client may
        # reuse it and must not read an answer to a request it never sent).
        if self._phase is not self:
            self.transport.write(HEADER_TIMEOUT)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        CLOSED["body_timeout"] += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app is waiting for the body; it reads a disconnect once the transport closes
            # and whatever it sends then is dropped by uvicorn.
            cycle.scope[BODY_TIMED_OUT] = True
            self.transport.write(BODY_TIMEOUT)
        self.transport.close()
