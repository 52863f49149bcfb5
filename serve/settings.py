"""Server settings: one frozen dataclass, read from the environment, overridden by the CLI.

Every field has an environment variable `SERVE_<FIELD>` (upper case), except the artifact
directory, which uses `ARTIFACTS_DIR` like the rest of the toolkit. `python -m serve --help`
lists the same fields as flags. The CLI writes the resolved settings back into the environment
so that every uvicorn worker process builds the same app (`serve.app:create_app_from_env`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path



class SettingsError(ValueError):
    """A setting with a value of the wrong type or out of range; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"          # loopback by default: exposing the server is a decision
    port: int = 8000
    # KServe V2 / Triton gRPC, e.g. 8001 (Triton's port); 0 = off. Off by default: an idle gRPC
    # server on the event loop cost HTTP ~3% of its requests/s at c=32 (serve/README.md).
    grpc_port: int = 0
    workers: int = 1                 # uvicorn worker processes, each loads every model
    artifacts: Path = Path("artifacts")  # ARTIFACTS_DIR; artifact root with <task>/selected.json
    providers: tuple[str, ...] = ("cuda", "cpu")  # ONNX Runtime providers, best first
    threads: int = 0                 # ORT intra-op threads per session; 0 = usable cores / workers
    max_batch_size: int = 32         # rows merged into one inference; 1 disables the batcher
    max_queue_delay_us: int = 500    # longest a batch waits for more requests, only under load
    max_queue_size: int = 1024       # requests waiting per model before answering 503
    api_key: str = ""                # when set, every route but health needs "Bearer <api_key>"
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies get 413 (a phone photo fits)
    # Rows (texts, images, tensors' first dimension) one request may carry; more get 413 before
    # any preprocessing: 1,000,000 short texts fit the body limit and once held the server 10 s.
    max_request_rows: int = 256
    # Connection hygiene (serve.connection): a cap on open connections per process (the
    # longest-idle are closed beyond it), and how long a request's head, its body and an idle
    # keep-alive connection may take. Slow or stalled clients then cost a bounded number of
    # file descriptors for a bounded time.
    max_connections: int = 10000
    header_timeout_s: int = 10
    body_timeout_s: int = 30
    keep_alive_s: int = 5
    cors_origins: tuple[str, ...] = ()     # browser origins allowed to call the API
    access_log: bool = False         # one JSON line per request (costs ~10% throughput)
    fast_path: bool = True           # JSON /v1/classify in plain ASGI, past FastAPI's router
    opentelemetry: bool = False      # FastAPI's native OpenTelemetry (global providers)
    log_level: str = "info"
    graceful_timeout_s: int = 20     # on SIGTERM: stop accepting, finish in-flight, then exit
    # Where worker processes share their metrics (serve.metrics.SharedMetrics); with
    # --workers > 1 and none given, a fresh temporary folder. Empty: each process its own.
    metrics_dir: str = ""
    # Seconds between looks at each task's selected.json / versions.json; a change loads the
    # new versions beside the old ones and swaps them in (serve.repository). 0: never.
    repository_poll_s: float = 2.0

    def __post_init__(self):
        positive = ("port", "workers", "max_batch_size", "max_queue_size", "max_body_bytes",
                    "max_request_rows", "graceful_timeout_s", "max_connections",
                    "header_timeout_s", "body_timeout_s", "keep_alive_s")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "max_queue_delay_us", "repository_poll_s", "grpc_port"):
            if getattr(self, name) < 0:
                raise SettingsError(f"setting {name} must be >= 0, got {getattr(self, name)}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(
                f"setting log_level {self.log_level!r} is unknown; valid: debug, info, warning, error")

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def session_threads(self) -> int:
        if self.threads:
            return self.threads
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        return max(1, cores // self.workers)  # workers share the cores, don't oversubscribe

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            key = env_name(f.name)
            if key in environ:
                values[f.name] = parse_value(f.name, environ[key])
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[env_name(f.name)] = str(value)
        return out


def env_name(field_name: str) -> str:
    return "ARTIFACTS_DIR" if field_name == "artifacts" else f"SERVE_{field_name.upper()}"


_FIELD_TYPES = {f.name: f.default for f in fields(Settings)}


def parse_value(name: str, text: str):
    """Convert a setting given as text (environment or CLI) to the field's type."""
    default = _FIELD_TYPES[name]
    try:
        if isinstance(default, bool):
            if text.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(p.strip() for p in text.split(",") if p.strip())
        if isinstance(default, Path):
            return Path(text)
        return text
    except ValueError:
        raise SettingsError(
            f"setting {name} ({env_name(name)}) must be a {type(default).__name__}, got {text!r}"
        ) from None


__all__ = ["Settings", "SettingsError", "env_name", "parse_value"]
