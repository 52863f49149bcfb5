"""`python -m benchmarks abuse`: good clients with and without abusive ones, side by side.

    taskset -c 1 python -m serve --port 8000 &
    taskset -c 0 python -m benchmarks abuse --url http://127.0.0.1:8000 --task fashion_mnist \
        --concurrency 64 --duration 10 --artifacts artifacts

Phases alternate, `--rounds` times: "clean" (the good clients alone) and "abused" (the same
good clients while every abuser in `ABUSERS` runs). The good clients are `benchmarks.load`'s
closed loop (every answer checked against the selected variant); a prober opens a fresh
connection every 50 ms for `/v2/health/ready`, as a load balancer would. Both phases of a
round run back to back, so their ratio is measured on the same machine state.

The record says, per phase: good requests/s, p50/p99, errors and wrong answers, the probe's
p99 and worst latency, and what each abuser got back. It passes when the abused p99 is within
`--max-p99-ratio` (2x) of the clean one of the same round, no good request failed, and every
probe answered within `--max-probe-ms` (100 ms).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import io
import json
import multiprocessing
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.environment import environment
from benchmarks.load import (HttpConnection, LoadError, LoadSettings, _run_level,
                             build_requests, http_request, parse_url)

ABUSE_SCHEMA = "tinyship.abuse/1"


@dataclass(frozen=True)
class AbuseSettings:
    load: LoadSettings
    rounds: int = 2
    idle_connections: int = 5000
    slow_bodies: int = 8
    text_task: str = "imdb"
    image_task: str = "fashion_mnist"
    probe_interval_s: float = 0.05
    max_p99_ratio: float = 2.0
    max_probe_ms: float = 100.0
    abusers: tuple[str, ...] = ()  # names in ABUSERS; empty: all of them


class _Tally:
    """What one abuser sent and got back."""

    def __init__(self):
        self.answers: Counter = Counter()
        self.sent = 0

    def saw(self, what) -> None:
        self.answers[str(what)] += 1


async def _send_once(host, port, payload: bytes, tally: _Tally) -> None:
    conn = HttpConnection(host, port)
    try:
        async with asyncio.timeout(30):
            status, _ = await conn.request(payload)
        tally.saw(status)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ConnectionError) as e:
        tally.saw(type(e).__name__)
    finally:
        await conn.close()
    tally.sent += 1


async def huge_texts(host, port, settings: AbuseSettings, stop_at: float, tally: _Tally) -> None:
    """8 MB of short texts (1,000,000 of them), one request after another."""
    body = json.dumps({"texts": ["good"] * 1_000_000}).encode()
    payload = http_request("POST", host, f"/v1/classify/{settings.text_task}", body)
    while time.perf_counter() < stop_at:
        await _send_once(host, port, payload, tally)


@functools.lru_cache(maxsize=1)
def _huge_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (7000, 7000), (255, 255, 255, 0)).save(buf, format="PNG")
    return buf.getvalue()


async def huge_image(host, port, settings: AbuseSettings, stop_at: float, tally: _Tally) -> None:
    """A 7000x7000 RGBA PNG (a few hundred KB, 196 MB decoded) as a multipart upload."""
    png = _huge_png()
    boundary = "tinyship-abuse"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/classify/{settings.image_task} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    while time.perf_counter() < stop_at:
        await _send_once(host, port, head + body, tally)


async def _connect(host, port, tally: _Tally, retry_after_s: float):
    """A new connection counted as sent, or None (the refusal tallied) after a pause."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        tally.saw(type(e).__name__)
        await asyncio.sleep(retry_after_s)
        return None
    tally.sent += 1
    return reader, writer


async def slow_bodies(host, port, settings: AbuseSettings, stop_at: float, tally: _Tally) -> None:
    """Connections announcing a 1,000-byte body and sending one byte every 100 ms."""
    async def one() -> None:
        while time.perf_counter() < stop_at:
            if (connection := await _connect(host, port, tally, 0.1)) is None:
                continue
            reader, writer = connection
            writer.write(f"POST /v1/classify/{settings.text_task} HTTP/1.1\r\nHost: {host}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                         .encode())
            try:
                while time.perf_counter() < stop_at:
                    writer.write(b" ")
                    await writer.drain()
                    try:
                        async with asyncio.timeout(0.1):  # the pause between two bytes
                            data = await reader.read(64)
                    except TimeoutError:
                        continue
                    # The server answered (or closed) before the body was complete.
                    tally.saw(data.split(b" ")[1].decode() if data.startswith(b"HTTP/")
                              else "closed")
                    break
                else:
                    tally.saw("phase over")
            except (OSError, ConnectionError) as e:
                tally.saw(type(e).__name__)
            finally:
                writer.close()
    await asyncio.gather(*(one() for _ in range(settings.slow_bodies)))


async def idle_connections(host, port, settings: AbuseSettings, stop_at: float,
                           tally: _Tally) -> None:
    """Thousands of connections that never send a byte, reopened when the server closes them."""
    async def hold() -> None:
        while time.perf_counter() < stop_at:
            if (connection := await _connect(host, port, tally, 0.5)) is None:
                continue
            reader, writer = connection
            try:
                async with asyncio.timeout(max(0.0, stop_at - time.perf_counter())):
                    await reader.read(1)  # returns when the server closes the connection
                tally.saw("closed by server")
            except TimeoutError:
                tally.saw("held to the end")
            except OSError as e:
                tally.saw(type(e).__name__)
            finally:
                writer.close()
            await asyncio.sleep(0.5)  # an abuser, not a busy loop
    await asyncio.gather(*(hold() for _ in range(settings.idle_connections)))


ABUSERS = {"huge_texts": huge_texts, "huge_image": huge_image, "slow_bodies": slow_bodies,
           "idle_connections": idle_connections}


async def _probe_health(host, port, interval_s: float, stop_at: float) -> list[tuple]:
    """(start time, latency s or None, failure) of each probe until stop_at."""
    payload = http_request("GET", host, "/v2/health/ready")
    probes = []
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        conn = HttpConnection(host, port)
        try:
            async with asyncio.timeout(5):
                status, _ = await conn.request(payload)
            probes.append((start, time.perf_counter() - start,
                           None if status == 200 else f"HTTP {status}"))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ConnectionError) as e:
            probes.append((start, None, type(e).__name__))
        finally:
            await conn.close()
        await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - start)))
    return probes


def _probe_stats(probes: list[tuple]) -> dict:
    ms = np.asarray([lat for _, lat, fail in probes if lat is not None and fail is None]) * 1e3
    return {"probes": len(probes),
            "failures": dict(Counter(fail for _, _, fail in probes if fail is not None)),
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
            "max_ms": float(ms.max()) if ms.size else None}


def _abuse_process(host, port, settings: AbuseSettings, seconds: float, ready, results) -> None:
    """The abusers, in a process of their own: sharing the good clients' event loop (thousands
    of connections, 8 MB bodies) would slow the measuring client, not only the server."""
    async def run() -> dict:
        _huge_png()  # encoded before the clock starts (about a second)
        ready.set()
        stop_at = time.perf_counter() + seconds
        tallies = {name: _Tally() for name in settings.abusers or ABUSERS}
        await asyncio.gather(*(ABUSERS[name](host, port, settings, stop_at, tally)
                               for name, tally in tallies.items()))
        return {name: {"sent": t.sent, "answers": dict(t.answers)} for name, t in tallies.items()}
    results.put(asyncio.run(run()))


async def _phase(host, port, requests, proto, settings: AbuseSettings, abused: bool) -> dict:
    """Abusers (in their own process) and the prober start with the good clients' warm-up; the
    good clients and the probes are judged on the measured part, after it. The warm-up holds
    the abusers' opening burst (5,000 connects at once): its probes are recorded apart, as
    `health_warmup`."""
    load = settings.load
    child = None
    if abused:
        ctx = multiprocessing.get_context("spawn")
        ready, results = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_abuse_process, daemon=True,
                            args=(host, port, settings, load.warmup_s + load.duration_s,
                                  ready, results))
        child.start()
        if not await asyncio.to_thread(ready.wait, 60):
            child.kill()
            raise LoadError("the abusers' process did not start within 60 s")
    measure_from = time.perf_counter() + load.warmup_s
    stop_at = measure_from + load.duration_s
    probe = asyncio.ensure_future(_probe_health(host, port, settings.probe_interval_s, stop_at))
    good = await _run_level(host, port, requests, proto, load.concurrency[0], load)
    probes = await probe
    abusers = {}
    if child is not None:
        abusers = await asyncio.to_thread(results.get, True, 120)
        child.join(10)
    return {"phase": "abused" if abused else "clean", "good": good,
            "health": _probe_stats([p for p in probes if p[0] >= measure_from]),
            "health_warmup": _probe_stats([p for p in probes if p[0] < measure_from]),
            "abusers": abusers}


def run_abuse(settings: AbuseSettings, progress=print) -> dict:
    unknown = set(settings.abusers) - set(ABUSERS)
    if unknown:
        raise LoadError(f"unknown abusers {sorted(unknown)}; known: {', '.join(ABUSERS)}")
    host, port, _ = parse_url(settings.load.url)
    requests, proto, reference = build_requests(settings.load)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    rounds = []
    for r in range(settings.rounds):
        phases = {}
        for abused in (False, True):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                phase = runner.run(_phase(host, port, requests, proto, settings, abused))
            phases[phase["phase"]] = phase
            g, h = phase["good"], phase["health"]
            progress(f"round {r + 1} {phase['phase']}: {g['requests_per_s']:,.0f} req/s, "
                     f"p99 {g['p99_ms'] or 0:.2f} ms, errors {g['errors']}, wrong "
                     f"{g['wrong_answers']}; health worst {h['max_ms'] or 0:.1f} ms (warm-up "
                     f"{phase['health_warmup']['max_ms'] or 0:.1f} ms)"
                     + "".join(f"; {n}: {a['answers']}" for n, a in phase["abusers"].items()))
        clean, abused = phases["clean"]["good"], phases["abused"]["good"]
        rounds.append({**phases, "p99_ratio": (abused["p99_ms"] / clean["p99_ms"]
                                               if clean["p99_ms"] else None),
                       "throughput_ratio": abused["requests_per_s"] / clean["requests_per_s"]})
    verdict = _verdict(rounds, settings)
    return {"schema": ABUSE_SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "url": settings.load.url, "task": settings.load.task, "endpoint": proto.path,
            "reference": reference, "abusers": {n: ABUSERS[n].__doc__
                                                for n in settings.abusers or ABUSERS},
            "settings": {**asdict(replace(settings, load=None)), "load": asdict(settings.load)},
            "environment": environment(), "rounds": rounds, "verdict": verdict}


def _verdict(rounds: list[dict], settings: AbuseSettings) -> dict:
    problems = []
    for i, r in enumerate(rounds, 1):
        for name in ("clean", "abused"):
            good, health = r[name]["good"], r[name]["health"]
            if good["errors"] or good["wrong_answers"]:
                problems.append(f"round {i} {name}: {good['errors']} failed and "
                                f"{good['wrong_answers']} wrong good requests")
            # The probe limit judges the abused phase; the clean one shows what the machine
            # itself allows (on a busy machine it can miss the limit with no abuser at all).
            if name == "abused" and (health["failures"]
                                     or (health["max_ms"] or 0) > settings.max_probe_ms):
                problems.append(f"round {i} {name}: health probe worst {health['max_ms'] or 0:.1f} "
                                f"ms, failures {health['failures']}")
        if r["p99_ratio"] is None or r["p99_ratio"] > settings.max_p99_ratio:
            problems.append(f"round {i}: abused p99 is {r['p99_ratio']:.2f}x the clean p99 "
                            f"(allowed {settings.max_p99_ratio}x)")
    return {"passed": not problems, "problems": problems}


def render_abuse_markdown(record: dict) -> str:
    env = record["environment"]
    lines = ["# Serving under abuse", "",
             f"{record['created']} · {record['url']} · `{record['endpoint']}` · {env['cpu']}, "
             f"{env['cpus_usable']} usable CPUs · {record['settings']['load']['concurrency'][0]} "
             f"good clients, {record['settings']['load']['duration_s']:g} s per phase", "",
             "Abusers (all at once in the abused phase): " + "; ".join(
                 f"**{n}**: {doc.strip().splitlines()[0]}" for n, doc in record["abusers"].items()),
             "", "| round | phase | good req/s | p50 ms | p99 ms | p99 vs clean | good errors "
             "| wrong | health p99 / worst ms | health worst in warm-up ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(record["rounds"], 1):
        for name in ("clean", "abused"):
            g, h, w = r[name]["good"], r[name]["health"], r[name]["health_warmup"]
            ratio = f"{r['p99_ratio']:.2f}x" if name == "abused" and r["p99_ratio"] else ""
            lines.append(f"| {i} | {name} | {g['requests_per_s']:,.0f} | {g['p50_ms']:.2f} | "
                         f"{g['p99_ms']:.2f} | {ratio} | {g['errors']} | {g['wrong_answers']} | "
                         f"{h['p99_ms'] or 0:.1f} / {h['max_ms'] or 0:.1f} | "
                         f"{w['max_ms'] or 0:.1f} |")
    lines += ["", "What the abusers got back (last round): " + "; ".join(
        f"{n}: {a['sent']} sent, {a['answers']}"
        for n, a in record["rounds"][-1]["abused"]["abusers"].items())]
    v = record["verdict"]
    lines += ["", "**PASS**" if v["passed"] else "**FAIL**: " + "; ".join(v["problems"])]
    return "\n".join(lines) + "\n"


def write_abuse(record: dict, reports: str | Path) -> Path:
    from benchmarks.report import write_record

    return write_record(record, reports, "abuse.json", "abuse.md", render_abuse_markdown(record))


__all__ = ["ABUSERS", "AbuseSettings", "LoadError", "render_abuse_markdown", "run_abuse",
           "write_abuse"]
