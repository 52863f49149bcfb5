"""One served model: a task's selected variant, loaded through the artifact contract.

`ServedModel.load()` reads the selected variant (checksums verified) and the runtime the
selection chose for it (`core.artifacts.selected_runtime`: ONNX Runtime or LiteRT, a row of
BACKENDS), rebuilds its preprocessing and labels from the manifest, opens the model (ONNX
Runtime on the best usable provider; LiteRT on the CPU) and warms it up. Only then is the
model `ready`; it reports the runtime, provider and placement it really got. A model that
fails to load keeps its error message, which its endpoints and the startup log report; the
other models are not affected. No TensorFlow, no HTTP.
"""
from __future__ import annotations

import enum
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.errors import InferenceFailed, InvalidInput, ModelNotReady, TooManyRows
from core.artifacts import (MODEL_FILES, ArtifactError, Variant, find_variant,
                            selected_placements, selected_runtime, selected_variant)
from core.runtime import usable_providers
from core.manifest import OutputSpec
from core.runtime import GPU_PROVIDERS, provider_name, variant_session

log = logging.getLogger("serve.model")

# Open Inference Protocol datatypes of the numpy dtypes our models take and give.
V2_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32",
                np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64",
                np.dtype(np.float16): "FP16", np.dtype(np.uint8): "UINT8"}
NUMPY_DTYPES = {v: k for k, v in V2_DATATYPES.items()}
WARMUP_ROUNDS = 3


@functools.lru_cache(maxsize=None)
def ort_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's exception classes: they derive from Exception, not RuntimeError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    names = ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile",
             "NoModel", "NotImplemented", "RuntimeException", "EPFail", "ModelLoaded")
    return tuple(getattr(ort_state, n) for n in names if hasattr(ort_state, n)) + (RuntimeError,)


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a model tensor; shape[0] is the batch dimension (-1)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return V2_DATATYPES[self.dtype]

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class OnnxBackend:
    """A variant's model.onnx on ONNX Runtime, on the first usable provider asked for."""

    runtime, platform = "onnx", "onnxruntime_onnx"
    model_file = MODEL_FILES[runtime]

    def __init__(self, variant: Variant, providers, threads: int):
        self._session = session = variant_session(variant, providers=providers, threads=threads)
        inputs = [i.name for i in session.get_inputs()]
        if variant.input.name not in inputs:
            raise ArtifactError(
                f"{variant.path}: manifest input {variant.input.name!r} is not an input of "
                f"model.onnx (inputs: {', '.join(inputs)})")
        self.output_name = session.get_outputs()[0].name
        # What the session really runs on, not what was asked for.
        self.provider = session.get_providers()[0]
        self.errors = ort_errors()
        asked = [provider_name(p) for p in providers]
        if asked and asked[0] != self.provider:
            _warn_once(f"{asked[0]} was asked for but the session runs on {self.provider}")

    def predict(self, input_name: str, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {input_name: x})[0]


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """One line per process, not one per model, for a placement other than the one asked for."""
    log.warning("%s (--providers cpu silences this)", message)



class LiteRTBackend:
    """A variant's model.tflite on LiteRT (ai-edge-litert, no TensorFlow), on the CPU. One
    interpreter, guarded by a lock: it holds one input shape and is not thread-safe."""

    runtime, platform = "litert", "litert_tflite"
    model_file = MODEL_FILES[runtime]
    provider = "LiteRT CPU (XNNPACK)"

    def __init__(self, variant: Variant, providers, threads: int):
        from core.runners import LiteRTModel

        asked = [provider_name(p) for p in providers]
        if asked and asked[0] != "CPUExecutionProvider":
            log.warning("model %s: the selected variant %s runs on LiteRT, which runs on the "
                        "CPU here; providers %s apply to ONNX models", variant.task,
                        variant.name, ", ".join(providers))
        self._model = LiteRTModel(variant.file(self.model_file),
                                  threads=threads if threads > 0 else (os.cpu_count() or 1))
        self._lock = threading.Lock()
        self.output_name = variant.output.name
        self.errors = (RuntimeError,)

    def predict(self, input_name: str, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._model.predict(x)


# runtime named by the selection record -> how serve runs it (core.artifacts.SERVING_RUNTIMES)
BACKENDS = {b.runtime: b for b in (OnnxBackend, LiteRTBackend)}


@dataclass(frozen=True)
class Placement:
    """Where a task runs: which variant, on which runtime, asking which providers."""

    name: str                   # "cpu" or "gpu"
    variant: str | None         # None: the selection's top-level (CPU) choice
    runtime: str
    providers: tuple[str, ...]
    note: str = ""              # why, when it is not what was asked for


def choose_placement(requested: tuple[str, ...], usable: tuple[str, ...], cpu_runtime: str,
                     placements: dict) -> Placement:
    """The GPU choice of selected.json when a GPU provider was asked for, is usable here and the
    GPU placement was measured; else the CPU choice, on the CPU when the GPU was asked for but
    its placement was not measured (a CPU-chosen model, int8 say, gains nothing on CUDA)."""
    asked = [provider_name(p) for p in requested]
    gpu_asked = [p for p in asked if p in GPU_PROVIDERS]
    gpu_usable = [p for p in gpu_asked if p in usable]
    gpu = placements.get("gpu") or {}
    if gpu_usable and gpu.get("variant"):
        provider = gpu.get("provider") if gpu.get("provider") in usable else gpu_usable[0]
        return Placement("gpu", gpu["variant"], "onnx",
                         tuple(dict.fromkeys((provider, *gpu_usable, "cpu"))))
    if gpu_usable:
        return Placement("cpu", None, cpu_runtime, ("cpu",),
                         f"{gpu_usable[0]} is usable but selected.json has no measured GPU "
                         f"placement ({gpu.get('why', 'none recorded')}): serving the CPU choice "
                         "on the CPU")
    if gpu_asked:
        return Placement("cpu", None, cpu_runtime, ("cpu",),
                         f"{gpu_asked[0]} was asked for but is not available on this host: "
                         "serving the CPU choice on the CPU")
    return Placement("cpu", None, cpu_runtime, tuple(requested))


class ServedModel:
    """Load/ready/predict for one version of a task, in the KServe model-class shape.

    `variant_name` None serves the task's selection (selected.json, with its CPU/GPU
    placements); a name serves that variant on the first runtime it has a model file for
    (ONNX Runtime before LiteRT), on the providers asked for. `version` is the number the
    standard protocols expose it under (serve.repository numbers a task's versions)."""

    def __init__(self, task: str, artifacts: Path, providers=("cuda", "cpu"), threads: int = 1,
                 warmup_batch_sizes: tuple[int, ...] = (1,), max_rows: int = 256,
                 variant_name: str | None = None, version: str = "1"):
        self.name = task
        self.version = version
        self.variant_name = variant_name
        self.max_rows = max_rows  # rows one request may carry (Settings.max_request_rows)
        self.artifacts = Path(artifacts)
        self.providers = tuple(providers)
        self.threads = threads
        self.warmup_batch_sizes = warmup_batch_sizes
        self.state = ModelState.LOADING
        self.error: str | None = None
        self.variant: Variant | None = None
        self.preprocess = None
        self.labels: list[str] = []
        self.input: TensorSpec | None = None
        self.output: TensorSpec | None = None
        self.output_spec: OutputSpec | None = None
        self.provider = None
        self.runtime: str | None = None
        self.load_seconds = None
        self._backend = None
        self._input_range: tuple[float, float] | None = None

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def kind(self) -> str:
        return self.variant.manifest.preprocessing_type if self.variant else "unknown"

    # -- loading ---------------------------------------------------------------------------
    def fail(self, error: str) -> "ServedModel":
        """Mark the model failed without loading it (its declaration is unusable)."""
        self.state, self.error = ModelState.FAILED, error
        return self

    def load(self) -> "ServedModel":
        """Load and warm up; never raises for a broken artifact (state FAILED + error instead)."""
        start = time.perf_counter()
        try:
            self._load()
        except (ArtifactError, OSError, ValueError, KeyError, *ort_errors()) as e:
            # A broken artifact of any kind: checksum, manifest, vocabulary, unreadable ONNX.
            log.error("model %s failed to load: %s: %s", self.name, type(e).__name__, e)
            self.state, self.error = ModelState.FAILED, self._public_reason(e)
            return self
        self.load_seconds = time.perf_counter() - start
        self.state = ModelState.READY
        log.info("model %s ready: variant %s on %s (%s, %s placement) in %.2fs", self.name,
                 self.variant.name, self.runtime, self.provider, self.placement,
                 self.load_seconds)
        return self

    def _public_reason(self, error: Exception) -> str:
        """Why loading failed, as clients may read it (/v1/models, 503 answers): file paths
        relative to the artifact root, and a runtime's own message only in the server log."""
        if isinstance(error, ort_errors()):
            return (f"{type(error).__name__}: the runtime could not load the model file "
                    "(see the server log)")
        text = f"{type(error).__name__}: {error}"
        for root in {str(self.artifacts.resolve()), str(self.artifacts)}:
            text = text.replace(root + os.sep, "").replace(root, "<artifacts>")
        return text

    @property
    def placement(self) -> str | None:
        """"gpu" or "cpu": where the model really runs (from the provider it got)."""
        if self.provider is None:
            return None
        return "gpu" if self.provider in GPU_PROVIDERS else "cpu"

    @property
    def platform(self) -> str:
        return self._backend.platform if self._backend else "unknown"

    def _where(self) -> tuple[Variant, str, tuple[str, ...]]:
        """(variant, runtime, providers) to load: the selection's placement, or the named variant."""
        if self.variant_name is not None:
            variant = find_variant(self.artifacts, self.name, self.variant_name, verify=True)
            runtimes = [r for r, b in BACKENDS.items() if variant.has_file(b.model_file)]
            if not runtimes:
                raise ArtifactError(f"{self.name}/{variant.name} has none of the model files "
                                    f"serve runs ({', '.join(MODEL_FILES[r] for r in BACKENDS)})")
            return variant, runtimes[0], self.providers
        where = choose_placement(self.providers, usable_providers(),
                                 selected_runtime(self.artifacts, self.name),
                                 selected_placements(self.artifacts, self.name))
        if where.note:
            _warn_once(where.note)
        variant = (find_variant(self.artifacts, self.name, where.variant, verify=True)
                   if where.variant else selected_variant(self.artifacts, self.name, verify=True))
        return variant, where.runtime, where.providers

    def _load(self) -> None:
        variant, runtime, providers = self._where()
        if runtime not in BACKENDS:
            raise ArtifactError(f"{self.artifacts / self.name}/selected.json: runtime "
                                f"{runtime!r}; serve runs {', '.join(BACKENDS)}")
        preprocess = variant.preprocessor()
        backend = BACKENDS[runtime](variant, providers, self.threads)
        spec, output = variant.input, variant.output
        shape = tuple(-1 if d is None else d for d in spec.shape)
        self.variant, self.preprocess, self._backend = variant, preprocess, backend
        self.runtime = runtime
        self.labels = variant.labels
        self.input = TensorSpec(spec.name, spec.numpy_dtype, shape)
        self.output = TensorSpec(backend.output_name, np.dtype(np.float32), (-1, output.width))
        self.output_spec = output
        self.provider = backend.provider
        self._input_range = self._valid_input_range()
        for n in self.warmup_batch_sizes:
            example = np.zeros((n, *shape[1:]), dtype=spec.numpy_dtype)
            for _ in range(WARMUP_ROUNDS):
                raw = self.predict(example)
            if raw.shape != (n, output.width):
                raise ArtifactError(f"{variant.path}: {backend.model_file} gives outputs of shape "
                                    f"{raw.shape} for {n} inputs; expected {(n, output.width)}")

    def _valid_input_range(self) -> tuple[float, float]:
        """Values a model input can hold after preprocessing (for checks on raw tensors)."""
        if self.kind == "text":
            return 0, self.preprocess.vocab_size - 1
        if self.kind == "image":
            shape = self.preprocess.input_shape
            ends = self.preprocess(np.array([np.zeros(shape), np.full(shape, 255)]))
            return float(ends.min()), float(ends.max())
        return -np.inf, np.inf

    def describe(self) -> dict:
        out = {"name": self.name, "version": self.version, "state": self.state.value}
        if self.error:
            out["error"] = self.error
        if self.variant is not None:
            out.update(variant=self.variant.name, model=self.variant.model,
                       runtime=self.runtime, provider=self.provider, placement=self.placement,
                       kind=self.kind,
                       input_shape=list(self.variant.input.example_shape), labels=self.labels,
                       test_accuracy=self.variant.metrics.get("test_accuracy"),
                       lineage=self.variant.lineage.to_dict())
        return out

    # -- inference -------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.state is ModelState.LOADING:
            raise ModelNotReady(f"model {self.name!r} is still loading", expected="retry shortly")
        if self.state is ModelState.FAILED:
            raise ModelNotReady(f"model {self.name!r} failed to load: {self.error}",
                                expected="a valid selected variant (see the server log)")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs for a batch of model inputs (already preprocessed and checked)."""
        try:
            return self._backend.predict(self.input.name, x)
        except (ValueError, *self._backend.errors) as e:
            log.error("model %s failed on a batch of %d: %s: %s", self.name, len(x),
                      type(e).__name__, e)
            raise InferenceFailed(f"model {self.name!r} failed on a batch of {len(x)} "
                                  "(see the server log)") from e

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities: a sigmoid column p(positive) becomes [1 - p, p]."""
        return self.output_spec.probabilities(raw)

    def check_rows(self, n: int, what: str = "the request") -> None:
        """Refuse more rows than one request may carry, before any work is done on them."""
        if n > self.max_rows:
            raise TooManyRows(f"{what} has {n:,} rows",
                              expected=f"at most {self.max_rows} rows per request (send more "
                                       f"requests; the server batches them)")

    def check_tensor(self, x: np.ndarray, what: str = "input") -> np.ndarray:
        """Validate a raw model-input tensor (standard protocols): dtype, shape, values."""
        spec = self.input
        if x.dtype != spec.dtype:
            raise InvalidInput(f"{what} has datatype {V2_DATATYPES.get(x.dtype, str(x.dtype))}",
                               expected=f"{spec.datatype} with shape {list(spec.shape)}")
        if x.ndim == len(spec.shape) - 1:
            x = x[None]  # one example without its batch dimension
        if x.ndim != len(spec.shape) or any(d != -1 and d != s for d, s in zip(spec.shape, x.shape)):
            raise InvalidInput(f"{what} has shape {list(x.shape)}",
                               expected=f"shape {list(spec.shape)} (-1: any batch size)")
        self.check_rows(x.shape[0], what)
        if x.shape[0] == 0:
            raise InvalidInput(f"{what} is an empty batch", expected="at least one example")
        lo, hi = self._input_range
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InvalidInput(f"{what} contains NaN or infinity",
                               expected=f"finite values in [{lo:g}, {hi:g}]")
        if x.min() < lo - 1e-3 or x.max() > hi + 1e-3:
            raise InvalidInput(f"{what} values span [{x.min():g}, {x.max():g}]",
                               expected=f"values in [{lo:g}, {hi:g}] (the preprocessed range; "
                               f"send raw data to /v1/classify/{self.name} instead)")
        return np.ascontiguousarray(x)
