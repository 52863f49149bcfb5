"""`python -m serve [--port N ...]` serves; `python -m serve export-triton --out DIR` exports.

Flags mirror `serve.settings.Settings` (each also readable from SERVE_<NAME> / ARTIFACTS_DIR);
a flag wins over the environment.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from serve.settings import Settings, SettingsError, env_name, parse_value

HELP = {
    "host": "interface to bind (0.0.0.0 exposes the server; set an API key then)",
    "port": "TCP port",
    "grpc_port": "TCP port of the KServe V2 / Triton gRPC service, e.g. 8001 (0: off); every "
                 "worker binds it",
    "workers": "uvicorn worker processes (each loads every model)",
    "artifacts": "artifact root with <task>/selected.json",
    "providers": "ONNX Runtime providers, best first, comma-separated (cuda,cpu)",
    "threads": "ORT intra-op threads per model; 0 = the usable cores divided by workers",
    "max_batch_size": "rows per batched inference; 1 disables the dynamic batcher",
    "max_queue_delay_us": "longest a batch waits for more requests under load (microseconds)",
    "max_queue_size": "queued requests per model before answering 503 + Retry-After",
    "api_key": "require 'Authorization: Bearer KEY' on every route but health "
               "(prefer the environment variable: flags show in `ps`)",
    "max_body_bytes": "largest request body (larger: 413)",
    "max_request_rows": "most rows (texts, images, tensor rows) in one request (more: 413)",
    "max_connections": "open connections per process; beyond it the longest-idle ones are "
                       "closed (all busy: 503)",
    "header_timeout_s": "seconds a client may take to send a request's head (then 408, closed)",
    "body_timeout_s": "seconds a client may take to send a request's body (then 408, closed)",
    "keep_alive_s": "seconds an idle keep-alive connection stays open",
    "cors_origins": "comma-separated browser origins allowed to call the API",
    "access_log": "log one JSON line per request (true/false)",
    "fast_path": "answer JSON /v1/classify in plain ASGI, past FastAPI's router (true/false)",
    "opentelemetry": "FastAPI's native OpenTelemetry through the global providers (true/false)",
    "log_level": "debug, info, warning or error",
    "graceful_timeout_s": "seconds to finish in-flight requests after SIGTERM",
    "metrics_dir": "folder where worker processes share their metrics (--workers > 1: a fresh "
                   "temporary one by default; its *.json files are cleared at start)",
    "repository_poll_s": "seconds between checks of each task's selected.json and "
                         "versions.json; a change is loaded and swapped in (0: never)",
}


def _settings_parser(parser: argparse.ArgumentParser, default=None) -> None:
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                            metavar=f.name.upper(),
                            help=f"{HELP[f.name]} [env {env_name(f.name)}; default {f.default}]")


def _resolve(args: argparse.Namespace) -> Settings:
    base = Settings.from_env()
    changes = {f.name: parse_value(f.name, getattr(args, f.name)) for f in fields(Settings)
               if getattr(args, f.name, None) is not None}
    return base.replace(**changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _settings_parser(parser)
    sub = parser.add_subparsers(dest="command")
    export = sub.add_parser("export-triton", help="write a Triton model repository + KServe "
                            "InferenceService from the selected variants")
    export.add_argument("--out", type=Path, default=Path("model_repository"))
    export.add_argument("--storage-uri", default="gs://YOUR-BUCKET/model_repository",
                        help="where the repository will live, for the KServe example")
    export.add_argument("--instance-kind", choices=("cpu", "gpu"), default="cpu",
                        help="Triton instance group kind (gpu: the selection's GPU placement "
                             "on KIND_GPU instances)")
    export.add_argument("--instance-count", type=int, default=1,
                        help="model instances Triton runs (per GPU for gpu)")
    export.add_argument("--runtime-version", default=None,
                        help="Triton release (NGC tag) of the KServe example's runtime")
    # SUPPRESS: a flag given before the subcommand must not be reset by the subparser.
    _settings_parser(export, default=argparse.SUPPRESS)
    return parser


def serve(settings: Settings) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from serve.connection import ConnectionLimits, ServeConfig, fit_file_limit
    from serve.logs import setup_logging

    setup_logging(settings.log_level)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logging.getLogger("serve").warning(
            "serving on %s without an API key: anyone who can reach the port can use it "
            "(set SERVE_API_KEY)", settings.host)
    if settings.workers > 1:
        settings = settings.replace(metrics_dir=_fresh_metrics_dir(settings.metrics_dir))
    limits = fit_file_limit(ConnectionLimits.from_settings(settings),
                            listeners=2 if settings.grpc_port else 1)
    settings = settings.replace(max_connections=limits.max_connections)  # gRPC's cap too
    # Worker processes rebuild the app from the environment: hand them the resolved settings.
    os.environ.update(settings.to_env())
    # uvicorn.run, with the guarded protocol's config (uvicorn.run builds its own Config).
    config = ServeConfig("serve.app:create_app_from_env", limits=limits, factory=True,
                         host=settings.host, port=settings.port, workers=settings.workers,
                         log_config=None, log_level=settings.log_level, access_log=False,
                         loop="auto", timeout_graceful_shutdown=settings.graceful_timeout_s)
    server = uvicorn.Server(config)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
    if not server.started and config.workers == 1:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: the port is taken, the app failed to load


def _fresh_metrics_dir(given: str) -> str:
    """The workers' shared metrics folder, empty: counts left by an earlier run would add up."""
    if not given:
        return tempfile.mkdtemp(prefix="tinyship-metrics-")
    folder = Path(given)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    return given


def export(settings: Settings, args: argparse.Namespace) -> int:
    from serve.triton_export import TRITON_RUNTIME_VERSION, export_triton

    if args.instance_count < 1:
        print(f"error: --instance-count must be >= 1, got {args.instance_count}", file=sys.stderr)
        return 2
    out = args.out
    exported, skipped = export_triton(settings.artifacts, out, settings,
                                      instance_kind=args.instance_kind,
                                      instance_count=args.instance_count,
                                      storage_uri=args.storage_uri,
                                      runtime_version=args.runtime_version
                                      or TRITON_RUNTIME_VERSION)
    for m in exported:
        print(f"{m.task}: variant {m.variant} -> {m.directory}")
    for task, why in skipped.items():
        print(f"{task}: skipped ({why})", file=sys.stderr)
    print(f"KServe example: {out / 'kserve-inferenceservice.yaml'}")
    return 0 if exported else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _resolve(args)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "export-triton":
        return export(settings, args)
    serve(settings)
    return 0
