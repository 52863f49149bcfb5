"""ONNX Runtime sessions, TensorFlow-free: shared by `serve` and the ONNX benchmark path.

onnxruntime-gpu lists CUDA/TensorRT in `get_available_providers()` even where the CUDA
libraries are absent; asking for them then logs a loud error and silently falls back to CPU.
So we ask for a GPU provider only when its libraries load, and we always decide from
`session.get_providers()` what a session really runs on.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

# The GPU providers, best first (TensorRT takes the subgraphs it supports, CUDA the rest).
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# Libraries each GPU provider needs at session creation (CUDA 13 builds of ORT >= 1.27).
_PROVIDER_LIBS = {
    "CUDAExecutionProvider": ("libcudart.so.13", "libcublasLt.so.13", "libcudnn.so.9"),
    "TensorrtExecutionProvider": ("libcudart.so.13", "libnvinfer.so.10"),
}


class ProviderUnavailableError(RuntimeError):
    """A provider was asked for that cannot run here; the message lists the usable ones."""


def provider_name(alias: str) -> str:
    key = alias.strip()
    name = PROVIDER_ALIASES.get(key.lower(), key)
    if name not in PROVIDER_ALIASES.values():
        raise ProviderUnavailableError(
            f"unknown provider {alias!r}; valid: {', '.join(sorted(set(PROVIDER_ALIASES)))}"
        )
    return name


@functools.lru_cache(maxsize=None)
def _libs_load(libs: tuple[str, ...]) -> bool:
    for lib in libs:
        try:
            ctypes.CDLL(lib)
        except OSError:
            return False
    return True


@functools.lru_cache(maxsize=None)
def usable_providers() -> tuple[str, ...]:
    """Providers that can really run here, best first."""
    import onnxruntime as ort

    out = []
    for p in ort.get_available_providers():
        libs = _PROVIDER_LIBS.get(p)
        if libs is None or _libs_load(libs):
            out.append(p)
    return tuple(out)


def make_session(model: str | Path | bytes, providers=("cuda", "cpu"), threads: int | None = None,
                 strict: bool = False, graph_optimization: str = "all",
                 provider_options: dict | None = None, disabled_optimizers=(),
                 **session_options):
    """An `onnxruntime.InferenceSession` on the first usable providers of `providers`.

    strict=True: every provider asked for must be usable and the session must really use
    the first one, else ProviderUnavailableError (benchmarks use this so that a "cuda" row
    can never be a silent CPU run). threads: intra-op threads (None: ORT's default).
    provider_options: {alias or provider name: {option: value}}, e.g.
    {"cuda": {"enable_cuda_graph": "1"}} (benchmarks' CUDA-graph runs).
    disabled_optimizers: ORT graph transformers to skip, by name (a variant's manifest can
    ask for this; see `variant_session`).
    """
    import onnxruntime as ort

    wanted = [provider_name(p) for p in providers]
    usable = usable_providers()
    missing = [p for p in wanted if p not in usable]
    if strict and missing:
        raise ProviderUnavailableError(
            f"provider(s) {', '.join(missing)} not usable here; usable: {', '.join(usable)}"
        )
    chosen = [p for p in wanted if p in usable] or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[graph_optimization]
    for k, v in session_options.items():
        setattr(so, k, v)
    src = model if isinstance(model, bytes) else os.fspath(model)
    options_by_name = {provider_name(k): dict(v) for k, v in (provider_options or {}).items()}
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    session = ort.InferenceSession(src, sess_options=so, providers=chosen,
                                   provider_options=[options_by_name.get(p, {}) for p in chosen],
                                   **extra)
    if strict and session.get_providers()[0] != chosen[0]:
        raise ProviderUnavailableError(
            f"session fell back to {session.get_providers()[0]} instead of {chosen[0]}"
        )
    return session


# The runtime settings a manifest may carry, and the make_session argument each one becomes.
VARIANT_ONNXRUNTIME_OPTIONS = ("disabled_optimizers",)


def variant_session(variant, **kwargs):
    """`make_session` for a variant's model.onnx with the runtime settings of its manifest.

    Every consumer (serve, benchmarks, compress's accuracy and parity checks) opens variant
    models through here, so a variant runs everywhere as it was measured. Example: a QDQ
    model whose first layer is kept in float needs ORT's QDQPropagationTransformer off, or
    ORT moves the first QuantizeLinear in front of the float MaxPool and runs that MaxPool
    on uint8 in a slow NCHW kernel (54 us instead of 2 us per Fashion image).
    """
    from core.artifacts import ArtifactError

    options = variant.onnxruntime_options
    unknown = sorted(set(options) - set(VARIANT_ONNXRUNTIME_OPTIONS))
    if unknown:
        raise ArtifactError(f"{variant.path}: unknown onnxruntime setting(s) {unknown} in the "
                         f"manifest; valid: {', '.join(VARIANT_ONNXRUNTIME_OPTIONS)}")
    return make_session(variant.file("model.onnx"), **{**options, **kwargs})
