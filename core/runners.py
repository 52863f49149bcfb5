"""Runners: one small interface over the three runtimes a variant can run on.

    from core.runners import open_runner
    runner = open_runner(variant, "onnx", providers=("cpu",), threads=1)
    probs = runner.predict(x)          # raw model outputs, numpy in, numpy out
    runner.describe()                  # runtime, provider, threads, file, versions ...

Runtimes (the `RUNTIMES` table; support grows by a row, not an elif):
  - "keras":  `model.keras` loaded through core.tf_setup, called through one compiled
              `tf.function` with a dynamic batch dimension (not `model.predict`, whose per-call
              setup costs milliseconds and would swamp a batch-1 latency);
  - "litert": `model.tflite` through ai-edge-litert's Interpreter, `num_threads` set;
  - "onnx":   `model.onnx` through `core.runtime.variant_session(..., strict=True)`, so a
              provider that cannot run here is an error listing the usable ones, never a silent
              CPU run. On CUDA the runner can also bind inputs/outputs on the device (IO binding)
              to time the model without host<->device copies, optionally replaying a CUDA graph.

This module imports no TensorFlow: the Keras runner imports it when it is opened, so the ONNX
path works on a GPU host that has only numpy and onnxruntime-gpu.
"""
from __future__ import annotations

import abc
import os

import numpy as np

from core.artifacts import MODEL_FILES, SERVING_RUNTIMES, ArtifactError, Variant, load_variant
from core.runtime import ProviderUnavailableError, provider_name, variant_session

__all__ = ["Runner", "OnnxRunner", "LiteRTRunner", "KerasRunner", "RUNTIMES", "MODEL_FILES",
           "SERVING_RUNTIMES", "open_runner", "runtimes_for", "RunnerError",
           "ProviderUnavailableError", "ArtifactError"]

# ORT device type of each provider's memory, for IO binding.
_DEVICE_OF_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda",
                       "CPUExecutionProvider": "cpu"}


class RunnerError(ValueError):
    """A runner cannot be opened for this variant/runtime; the message says why and the choices."""


class Runner(abc.ABC):
    """Base class: a loaded model on one runtime.

    Subclasses set `runtime`, `provider`, `threads` and implement `predict`.
    """

    runtime: str = ""

    def __init__(self, variant: Variant, threads: int):
        if int(threads) < 1:
            raise RunnerError(f"threads must be >= 1, got {threads}")
        self.variant = variant
        self.threads = int(threads)
        self.provider = "cpu"
        self.model_file = variant.file(MODEL_FILES[self.runtime])
        self.input_dtype = variant.input.numpy_dtype

    @abc.abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs for a batch `x` (`variant.output.probabilities` makes them
        per-class probabilities)."""

    def _as_input(self, x: np.ndarray) -> np.ndarray:
        # No copy when the caller already passes the right dtype (the benchmark loop does).
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    @abc.abstractmethod
    def library_version(self) -> str:
        """Name and version of the library that runs the model, for the report."""

    def describe(self) -> dict:
        return {
            "task": self.variant.task,
            "variant": self.variant.name,
            "runtime": self.runtime,
            "provider": self.provider,
            "threads": self.threads,
            "file": self.model_file.name,
            "file_bytes": self.model_file.stat().st_size,
            "input_dtype": self.input_dtype.name,
            "library": self.library_version(),
        }

    def close(self) -> None:
        """Release the model (sessions and interpreters hold memory and threads)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OnnxRunner(Runner):
    """ONNX Runtime session on the providers asked for, verified to really use the first one.

    cuda_graph=True (CUDA only) captures the model as a CUDA graph on the first bound run and
    replays it afterwards; ORT then requires fixed input/output buffers, so only the
    device-bound path (`bind` + `run_bound`) is allowed on such a session.
    """

    runtime = "onnx"

    def __init__(self, variant: Variant, providers=("cpu",), threads: int = 1,
                 cuda_graph: bool = False, provider_options: dict | None = None):
        super().__init__(variant, threads)
        wanted = [provider_name(p) for p in providers]
        if not wanted:
            raise RunnerError("providers is empty; valid: cpu, cuda, tensorrt")
        if cuda_graph and wanted[0] != "CUDAExecutionProvider":
            raise RunnerError(f"cuda_graph needs the CUDA provider first, got {wanted[0]}")
        options = {provider_name(k): dict(v) for k, v in (provider_options or {}).items()}
        if cuda_graph:
            options.setdefault("CUDAExecutionProvider", {})["enable_cuda_graph"] = "1"
        self.provider_options = options
        self.session = variant_session(variant, providers=wanted, threads=self.threads,
                                       strict=True, provider_options=options or None)
        # make_session(strict=True) already refused a fallback; record what really runs.
        self.provider_full = self.session.get_providers()[0]
        self.provider = self.provider_full.replace("ExecutionProvider", "").lower()
        self.device = _DEVICE_OF_PROVIDER.get(self.provider_full, "cpu")
        self.cuda_graph = bool(cuda_graph)
        declared = variant.input.name
        names = [i.name for i in self.session.get_inputs()]
        self.input_name = declared if declared in names else names[0]
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self._output_tail = list(out.shape[1:])
        self._binding = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.cuda_graph:
            raise RunnerError("a CUDA-graph session runs only bound buffers: use bind()/run_bound()")
        return self.session.run([self.output_name], {self.input_name: self._as_input(x)})[0]

    # ---- IO binding: inputs and outputs stay on the provider's device between runs

    def bind(self, x: np.ndarray) -> None:
        """Copy `x` to the device once and allocate the output there, for `run_bound`.

        Works on CPU too (device "cpu"), which is how the tests exercise this path.
        """
        import onnxruntime as ort

        x = self._as_input(x)
        if not all(isinstance(d, int) for d in self._output_tail):
            raise RunnerError(f"output {self.output_name!r} has a dynamic shape "
                              f"{self._output_tail}; IO binding needs static non-batch dims")
        self._x_dev = ort.OrtValue.ortvalue_from_numpy(x, self.device, 0)
        out_type = self.session.get_outputs()[0].type  # e.g. "tensor(float)"
        out_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                     "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}.get(out_type)
        if out_dtype is None:
            raise RunnerError(f"output type {out_type} is not supported by IO binding here")
        self._y_dev = ort.OrtValue.ortvalue_from_shape_and_type(
            [len(x), *self._output_tail], out_dtype, self.device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, self._x_dev)
        binding.bind_ortvalue_output(self.output_name, self._y_dev)
        self._binding = binding

    def run_bound(self) -> None:
        """One run on the bound device buffers: no host<->device copy is timed.

        `run_with_iobinding` synchronizes the provider's stream before returning (ORT's default),
        so the wall time of this call is the device time of the model plus launch overhead.
        """
        if self._binding is None:
            raise RunnerError("call bind(x) before run_bound()")
        self.session.run_with_iobinding(self._binding)

    def update_bound(self, x: np.ndarray) -> None:
        """Copy new input into the bound device buffer (same shape), keeping its address,
        which a CUDA graph replay requires."""
        self._x_dev.update_inplace(self._as_input(x))

    def bound_output(self) -> np.ndarray:
        """The last bound run's output, copied to the host."""
        return self._y_dev.numpy()

    def library_version(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"

    def describe(self) -> dict:
        d = super().describe()
        d.update({"provider_full": self.provider_full, "session_providers":
                  list(self.session.get_providers()), "cuda_graph": self.cuda_graph})
        return d

    def close(self) -> None:
        self._binding = None
        self.session = None


class LiteRTModel:
    """The one way a `.tflite` model is run: ai-edge-litert's Interpreter on a file or bytes.

    The interpreter has one input shape at a time: a batch of another size resizes the input
    tensor and reallocates, so timing loops should keep the batch size fixed (they do).
    Int8-I/O models get their inputs quantized and outputs dequantized here, as the server would.
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        source = ({"model_content": bytes(model)} if isinstance(model, (bytes, bytearray))
                  else {"model_path": os.fspath(model)})
        self.interpreter = Interpreter(num_threads=int(threads), **source)
        self.input_details = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._batch = None

    def _ensure_batch(self, n: int) -> None:
        if n != self._batch:
            shape = [n, *self.input_details["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input_details["index"], shape)
            self.interpreter.allocate_tensors()
            self._batch = n

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._ensure_batch(len(x))
        dtype = self.input_details["dtype"]
        scale, zero = self.input_details["quantization"]
        if dtype in (np.int8, np.uint8) and scale:
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input_details["index"], x.astype(dtype, copy=False))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        out_scale, out_zero = self._out["quantization"]
        if self._out["dtype"] in (np.int8, np.uint8) and out_scale:
            y = (y.astype(np.float32) - out_zero) * out_scale
        return y


class LiteRTRunner(Runner):
    """A variant's `.tflite` model on LiteRT (see `LiteRTModel`)."""

    runtime = "litert"

    def __init__(self, variant: Variant, threads: int = 1):
        super().__init__(variant, threads)
        self.model = LiteRTModel(self.model_file, self.threads)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(self._as_input(x))

    def library_version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"ai-edge-litert {version('ai-edge-litert')}"
        except PackageNotFoundError:
            return "ai-edge-litert (version unknown)"

    def describe(self) -> dict:
        d = super().describe()
        d["tflite_input_dtype"] = np.dtype(self.model.input_details["dtype"]).name
        return d

    def close(self) -> None:
        self.model = None


class KerasRunner(Runner):
    """A tf_keras model called through one compiled `tf.function` (dynamic batch dimension).

    TensorFlow's thread pools are process-wide and fixed once TF has run an op: the first Keras
    runner of a process sets them; `describe()` reports the value really in force.
    """

    runtime = "keras"

    def __init__(self, variant: Variant, threads: int = 1):
        super().__init__(variant, threads)
        from core.evaluate import load_keras
        from core.tf_setup import tf

        self._tf = tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(self.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialized by an earlier runner; describe() reports the real value
        self.model = load_keras(variant)
        spec = tf.TensorSpec([None, *self.model.input_shape[1:]], self.model.inputs[0].dtype)
        model = self.model
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._call(self._tf.constant(self._as_input(x))).numpy()

    def library_version(self) -> str:
        import tf_keras

        return f"tensorflow {self._tf.__version__}, tf_keras {tf_keras.__version__}"

    def describe(self) -> dict:
        d = super().describe()
        d["threads"] = self._tf.config.threading.get_intra_op_parallelism_threads() or self.threads
        return d

    def close(self) -> None:
        self.model = None
        self._call = None


RUNTIMES = {"keras": KerasRunner, "litert": LiteRTRunner, "onnx": OnnxRunner}


def runtimes_for(variant: Variant) -> list[str]:
    """The runtimes this variant has a model file for, in `RUNTIMES` order."""
    return [rt for rt in RUNTIMES if variant.has_file(MODEL_FILES[rt])]


def open_runner(variant: Variant | str | os.PathLike, runtime: str, *, providers=("cpu",),
                threads: int = 1, cuda_graph: bool = False) -> Runner:
    """Open `variant` (a Variant or its directory) on `runtime` ("keras", "litert", "onnx").

    providers/cuda_graph apply to "onnx" only; asking another runtime for a GPU provider is an
    error rather than a silently CPU-only measurement.
    """
    if not isinstance(variant, Variant):
        variant = load_variant(variant)
    if runtime not in RUNTIMES:
        raise RunnerError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    needed = MODEL_FILES[runtime]
    if not variant.has_file(needed):
        have = ", ".join(runtimes_for(variant)) or "none"
        raise RunnerError(f"{variant.task}/{variant.name} has no {needed}, so it cannot run on "
                          f"{runtime}; runtimes it has files for: {have}")
    if runtime == "onnx":
        return OnnxRunner(variant, providers=providers, threads=threads, cuda_graph=cuda_graph)
    asked = [provider_name(p) for p in providers]
    if asked != ["CPUExecutionProvider"]:
        raise RunnerError(f"runtime {runtime!r} runs on the CPU only here; providers {list(providers)} "
                          "apply to the onnx runtime")
    if cuda_graph:
        raise RunnerError("cuda_graph applies to the onnx runtime with the cuda provider only")
    return RUNTIMES[runtime](variant, threads=threads)
