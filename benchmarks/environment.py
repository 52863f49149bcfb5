"""What a benchmark ran on: CPU model and cores, GPU and driver, library versions.

TensorFlow-free: versions come from package metadata, not from importing the packages, so
recording the environment neither costs TensorFlow's import time nor needs it installed.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("numpy", "onnxruntime-gpu", "onnxruntime", "onnx", "ai-edge-litert", "tensorflow",
             "tf-keras", "tensorflow-model-optimization", "tf2onnx")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict]:
    """GPUs and driver from nvidia-smi; [] where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return rows


def library_versions() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def onnxruntime_providers() -> list[str]:
    """Providers that can really run here (core.runtime checks their libraries load)."""
    try:
        from core.runtime import usable_providers

        return list(usable_providers())
    except ImportError:
        return []


def environment() -> dict:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
        # A busy machine makes latencies noisy; the load average at the start says how busy.
        "load_average": load,
        "gpus": gpus(),
        "onnxruntime_providers": onnxruntime_providers(),
        "libraries": library_versions(),
    }
