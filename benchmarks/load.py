"""`python -m benchmarks load`: drive a running server with real test inputs, check every answer.

    python -m benchmarks load --url http://127.0.0.1:8000 --task fashion_mnist \
        --concurrency 1,8,32,64 --duration 10 [--artifacts artifacts]

Closed loop: at concurrency C there are C keep-alive HTTP/1.1 connections, each sending its
next request as soon as the previous answer arrived. The client is a small raw HTTP/1.1
implementation on asyncio (uvloop when installed) rather than a general HTTP library, so that one
core can drive a server doing well over 6,000 requests/s; requests are encoded before the clock
starts.

Endpoints (--protocol): "v1" = the friendly `/v1/classify/{task}` ({"pixels": 28x28 ints} or
{"text": review}; the answer's `top_k[0].label` is checked); "v2" = KServe V2
`/v2/models/{task}/infer` with the preprocessed tensor (needs --artifacts for the preprocessing,
input name from the server's model metadata; the argmax of the output is checked); "auto" = v1,
else v2 when v1 answers 404.

Every answer is checked. errors = transport failures, timeouts, non-200 statuses and answers that
are not a well-formed classification; wrong_answers = well-formed answers whose label differs
from the reference: the task's selected variant run locally with ONNX Runtime (--artifacts), or
else the dataset's labels (then wrong answers include the model's honest mistakes, and only
errors make the command fail).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

from benchmarks.environment import environment
from core.evaluate import predict_probabilities
from core.manifest import probabilities
from core import data as datasets
from core.tasks import get_task

LOAD_SCHEMA = "tinyship.load/1"
LOAD_JSON, LOAD_MD = "load.json", "load.md"


class LoadError(RuntimeError):
    """The server cannot be load-tested (does not answer, wrong URL, unusable settings)."""


@dataclass(frozen=True)
class LoadSettings:
    url: str
    task: str
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    duration_s: float = 10.0
    protocol: str = "auto"        # "v1", "v2" or "auto"
    data_dir: str | None = None
    artifacts: str | None = None  # reference answers from the selected variant (else labels)
    timeout_s: float = 10.0
    examples: int = 512           # distinct test inputs cycled through
    warmup_s: float = 0.5         # per level, not recorded


@dataclass(frozen=True)
class _Request:
    payload: bytes          # the complete HTTP request
    expected: int           # expected class id


# ---------------------------------------------------------------- a minimal HTTP/1.1 client

class HttpConnection:
    """One keep-alive HTTP/1.1 connection: send a pre-encoded request, read one response."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnectionError(f"not an HTTP/1.x response: {lines[0]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self.reader.read()  # body ends with the connection
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


def http_request(method: str, host: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + (body or b"")


def parse_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadError(f"--url {url!r}: expected http://HOST:PORT (plain HTTP; put TLS in front "
                        "of the server, not in the benchmark)")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


# ---------------------------------------------------------------- requests and answers

class _Protocol:
    """How one endpoint encodes an input and where the class id is in the answer."""

    def __init__(self, name: str, path: str, labels: list[str]):
        self.name, self.path, self.labels = name, path, labels
        self._label_ids = {label: i for i, label in enumerate(labels)}

    def answer_class(self, body: bytes) -> int:
        """The class id of a well-formed answer; ValueError for anything else."""
        doc = orjson.loads(body)
        if self.name == "v1":
            label = doc["top_k"][0]["label"]
            if label not in self._label_ids:
                raise ValueError(f"label {label!r} is not one of the task's labels")
            return self._label_ids[label]
        out = doc["outputs"][0]
        probs = probabilities(np.asarray(out["data"], dtype=np.float64).reshape(out["shape"]))
        if probs.shape != (1, len(self.labels)):
            raise ValueError(f"output shape {out['shape']} does not match {len(self.labels)} classes")
        return int(probs.argmax(axis=1)[0])


def _v1_body(task_kind: str, raw) -> bytes:
    if task_kind == "text":
        return orjson.dumps({"text": str(raw)})
    return orjson.dumps({"pixels": np.asarray(raw, dtype=np.uint8).tolist()})


def _v2_body(input_name: str, datatype: str, x: np.ndarray) -> bytes:
    return orjson.dumps({"inputs": [{"name": input_name, "datatype": datatype,
                                     "shape": list(x.shape), "data": x.ravel().tolist()}]})


def _reference(settings: LoadSettings, x_raw, y) -> tuple[np.ndarray, dict, object]:
    """Expected class ids: the selected variant's local ONNX predictions, or the labels.
    Also returns the selected variant (None without --artifacts) for V2 preprocessing."""
    if settings.artifacts is None:
        return np.asarray(y), {"kind": "labels", "detail": "dataset labels (wrong answers "
                               "include the served model's own mistakes)"}, None
    from core.runners import OnnxRunner
    from core.artifacts import ArtifactError, selected_variant

    try:
        variant = selected_variant(settings.artifacts, settings.task)
    except ArtifactError as e:
        raise LoadError(f"--artifacts {settings.artifacts}: {e}") from None
    with OnnxRunner(variant, providers=("cpu",), threads=1) as runner:
        x = variant.preprocessor()(x_raw)
        expected = predict_probabilities(runner, x, batch=256).argmax(axis=1)
    return expected, {"kind": "model", "detail": f"selected variant {variant.name} run locally "
                      "(onnxruntime, CPU)"}, variant


async def _probe(host: str, port: int, payload: bytes, timeout_s: float) -> tuple[int, bytes]:
    conn = HttpConnection(host, port)
    try:
        async with asyncio.timeout(timeout_s):
            return await conn.request(payload)
    finally:
        await conn.close()


def _probe_sync(host, port, payload, timeout_s, url) -> tuple[int, bytes]:
    try:
        return asyncio.run(_probe(host, port, payload, timeout_s))
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ConnectionError) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        raise LoadError(f"nothing answers at {url} ({reason}); start the server first, "
                        "e.g. `make serve PORT=8000`") from None


def build_requests(settings: LoadSettings) -> tuple[list[_Request], _Protocol, dict]:
    spec = get_task(settings.task)
    host, port, base = parse_url(settings.url)
    ds = datasets.load(spec.dataset, "test", data_dir=settings.data_dir)
    if settings.examples < len(ds):
        ds = ds.subset(settings.examples)
    expected, reference, variant = _reference(settings, ds.x, ds.y)

    protocol = settings.protocol
    v1_path = f"{base}/v1/classify/{settings.task}?k=1"
    if protocol in ("auto", "v1"):
        status, body = _probe_sync(host, port, http_request(
            "POST", host, v1_path, _v1_body(spec.kind, ds.x[0])), settings.timeout_s, settings.url)
        if status == 404 and protocol == "auto":
            protocol = "v2"
        elif status != 200:
            raise LoadError(f"POST {v1_path} answered {status}: {body[:300]!r}")
        else:
            protocol = "v1"
    if protocol == "v1":
        proto = _Protocol("v1", v1_path, list(spec.labels))
        payloads = [http_request("POST", host, v1_path, _v1_body(spec.kind, raw)) for raw in ds.x]
    else:
        if variant is None:
            raise LoadError("the V2 endpoint takes the preprocessed tensor: pass --artifacts so "
                            "the task's selected variant's preprocessing can be applied")
        meta_path = f"{base}/v2/models/{settings.task}"
        status, body = _probe_sync(host, port, http_request("GET", host, meta_path),
                                   settings.timeout_s, settings.url)
        if status != 200:
            raise LoadError(f"GET {meta_path} answered {status}: {body[:300]!r}")
        meta_input = orjson.loads(body)["inputs"][0]
        x = variant.preprocessor()(ds.x)
        path = f"{base}/v2/models/{settings.task}/infer"
        proto = _Protocol("v2", path, list(spec.labels))
        payloads = [http_request("POST", host, path, _v2_body(meta_input["name"],
                                                              meta_input["datatype"], x[i:i + 1]))
                    for i in range(len(x))]
    requests = [_Request(p, int(e)) for p, e in zip(payloads, expected)]
    return requests, proto, {**reference, "data_source": ds.source, "examples": len(requests)}


# ---------------------------------------------------------------- the load loop

@dataclass
class _LevelStats:
    latencies_ns: list
    errors: int = 0
    transport_errors: int = 0   # no answer at all (connection failure, timeout)
    wrong: int = 0
    error_kinds: dict = None

    def error(self, kind: str, transport: bool = False) -> None:
        self.errors += 1
        self.transport_errors += int(transport)
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def _connection_loop(host, port, requests, proto, first: int, stop_at: float,
                           timeout_s: float, stats: _LevelStats | None) -> None:
    conn = HttpConnection(host, port)
    clock = time.perf_counter
    i = first
    n = len(requests)
    try:
        while clock() < stop_at:
            req = requests[i % n]
            i += 1
            t0 = time.perf_counter_ns()
            try:
                async with asyncio.timeout(timeout_s):
                    status, body = await conn.request(req.payload)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError, TimeoutError, ValueError) as e:
                await conn.close()  # the connection state is unknown: start a new one
                if stats is not None:
                    stats.error("timeout" if isinstance(e, TimeoutError) else type(e).__name__,
                                transport=True)
                continue
            elapsed = time.perf_counter_ns() - t0
            if stats is None:
                continue
            stats.latencies_ns.append(elapsed)
            if status != 200:
                stats.error(f"HTTP {status}")
                continue
            try:
                got = proto.answer_class(body)
            except (ValueError, KeyError, IndexError, TypeError):
                stats.error("malformed answer")
                continue
            if got != req.expected:
                stats.wrong += 1
    finally:
        await conn.close()


async def _run_level(host, port, requests, proto, concurrency: int, settings: LoadSettings) -> dict:
    n = len(requests)
    if settings.warmup_s > 0:
        stop = time.perf_counter() + settings.warmup_s
        await asyncio.gather(*(_connection_loop(host, port, requests, proto, c * n // concurrency,
                                                stop, settings.timeout_s, None)
                               for c in range(concurrency)))
    stats = _LevelStats([], error_kinds={})
    cpu_start = time.process_time()
    start = time.perf_counter()
    stop = start + settings.duration_s
    await asyncio.gather(*(_connection_loop(host, port, requests, proto, c * n // concurrency,
                                            stop, settings.timeout_s, stats)
                           for c in range(concurrency)))
    elapsed = time.perf_counter() - start
    client_cpu_s = time.process_time() - cpu_start
    lat_ms = np.asarray(stats.latencies_ns, dtype=np.float64) / 1e6
    # Requests sent = those answered (timed) + those lost to transport errors and timeouts.
    done = int(lat_ms.size) + stats.transport_errors
    pct = (lambda q: float(np.percentile(lat_ms, q))) if lat_ms.size else (lambda q: None)
    return {"concurrency": concurrency, "duration_s": round(elapsed, 3), "requests": done,
            "requests_per_s": lat_ms.size / elapsed, "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "mean_ms": float(lat_ms.mean()) if lat_ms.size else None,
            "errors": stats.errors, "wrong_answers": stats.wrong,
            "error_kinds": dict(stats.error_kinds),
            # The load generator's own CPU per request: if 1e6 / this is near requests_per_s,
            # the client, not the server, was the limit.
            "client_cpu_us_per_request": 1e6 * client_cpu_s / max(done, 1)}


def run_load(settings: LoadSettings, progress=print) -> dict:
    if any(c < 1 for c in settings.concurrency) or settings.duration_s <= 0:
        raise LoadError(f"concurrency levels must be >= 1 and duration > 0, got "
                        f"{list(settings.concurrency)} and {settings.duration_s}")
    if settings.protocol not in ("auto", "v1", "v2"):
        raise LoadError(f"unknown protocol {settings.protocol!r}; valid: auto, v1, v2")
    host, port, _ = parse_url(settings.url)
    requests, proto, reference = build_requests(settings)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    levels = []
    for c in settings.concurrency:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            level = runner.run(_run_level(host, port, requests, proto, c, settings))
        levels.append(level)
        progress(f"concurrency {c}: {level['requests_per_s']:,.0f} req/s, p50 "
                 f"{level['p50_ms'] or 0:.2f} ms, p99 {level['p99_ms'] or 0:.2f} ms, "
                 f"errors {level['errors']}, wrong {level['wrong_answers']}")
    return {"schema": LOAD_SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "url": settings.url, "task": settings.task, "endpoint": proto.path,
            "protocol": proto.name, "reference": reference, "settings": asdict(settings),
            "environment": environment(), "levels": levels}


def render_load_markdown(record: dict) -> str:
    from benchmarks.report import load_table, markdown_table

    head, rows = load_table(record)
    env = record["environment"]
    lines = ["# Serving load test", "",
             f"{record['created']} · {record['url']} · {record['protocol']} endpoint "
             f"`{record['endpoint']}` · {env['cpu']}, {env['cpus_usable']} usable CPUs (client "
             "and server share them when run on one machine)",
             f"Answers checked against: {record['reference']['detail']}; inputs: "
             f"{record['reference']['examples']} test examples from "
             f"{record['reference']['data_source']}.", ""]
    lines += markdown_table(head, rows)
    kinds = {k for lvl in record["levels"] for k in lvl["error_kinds"]}
    if kinds:
        lines += ["", "Errors by kind: " + "; ".join(
            f"c={lvl['concurrency']}: " + ", ".join(f"{k} {v}" for k, v in lvl["error_kinds"].items())
            for lvl in record["levels"] if lvl["error_kinds"])]
    return "\n".join(lines) + "\n"


def write_load(record: dict, reports: str | Path) -> Path:
    from benchmarks.report import write_record

    return write_record(record, reports, LOAD_JSON, LOAD_MD, render_load_markdown(record))
