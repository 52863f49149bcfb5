"""Export a tf_keras model to ONNX and TFLite, with a parity check against the source model.

Used by `trainer` (every trained variant carries model.onnx and model.tflite beside the Keras
model) and by `compress` for derived variants. Parity rules (issue 5): float exports must agree
with the source within `FLOAT_ATOL` on probabilities; quantized exports must agree on the top-1
class for at least `QUANT_TOP1_AGREEMENT` of the inputs. A failing check raises ExportParityError
with the numbers, so no variant with a broken export is ever written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.manifest import probabilities

ONNX_OPSET = 17
ONNX_INPUT_NAME = "input"
# On probabilities. A float export computes the same function with other kernels (XNNPACK,
# MLAS) that sum in another order; over EfficientNet-B0's 80 convolutions with swish and
# squeeze-excitation that reordering alone moves a probability by up to ~1e-4 (LiteRT, 200
# Fashion inputs: 1.03e-4 with 100% top-1 agreement), while a wrong export (a transposed
# kernel, a lost normalization) moves them by 1e-2 or more.
FLOAT_ATOL = 5e-4
QUANT_TOP1_AGREEMENT = 0.99


class ExportParityError(RuntimeError):
    """An exported model disagrees with its source beyond the allowed tolerance."""


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    n: int
    max_abs_diff: float
    top1_agreement: float
    quantized: bool

    @property
    def ok(self) -> bool:
        if self.quantized:
            return self.top1_agreement >= QUANT_TOP1_AGREEMENT
        return self.max_abs_diff <= FLOAT_ATOL

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "n": self.n, "max_abs_diff": self.max_abs_diff,
                "top1_agreement": self.top1_agreement, "quantized": self.quantized,
                "ok": self.ok}


def compare(reference: np.ndarray, candidate: np.ndarray, runtime: str,
            quantized: bool) -> ParityReport:
    # float64: the differences checked against FLOAT_ATOL are between float32 outputs.
    ref = probabilities(np.asarray(reference, dtype=np.float64))
    cand = probabilities(np.asarray(candidate, dtype=np.float64))
    if ref.shape != cand.shape:
        raise ExportParityError(f"{runtime}: output shape {cand.shape} != source {ref.shape}")
    return ParityReport(runtime, len(ref), float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
                        float(np.mean(ref.argmax(1) == cand.argmax(1))) if ref.size else 1.0,
                        quantized)


def check_parity(reference: np.ndarray, candidate: np.ndarray, runtime: str,
                 quantized: bool = False) -> ParityReport:
    report = compare(reference, candidate, runtime, quantized)
    if not report.ok:
        rule = (f"top-1 agreement >= {QUANT_TOP1_AGREEMENT:.0%}" if quantized
                else f"max |diff| <= {FLOAT_ATOL:g}")
        raise ExportParityError(
            f"{runtime} export fails parity on {report.n} real inputs: max |diff| "
            f"{report.max_abs_diff:.3g}, top-1 agreement {report.top1_agreement:.2%} (need {rule})"
        )
    return report


def input_signature(model, dtype=None):
    """A TensorSpec with a dynamic batch dimension named `input`, from the model's input."""
    from core.tf_setup import tf

    shape = [None] + list(model.input_shape[1:])
    return [tf.TensorSpec(shape, dtype or model.inputs[0].dtype, name=ONNX_INPUT_NAME)]


def export_onnx(model, path: str | Path, opset: int = ONNX_OPSET) -> dict:
    """tf2onnx export with a dynamic batch dimension; returns the ONNX input/output names."""
    import tf2onnx

    from core.tf_setup import require_tf_keras_model

    require_tf_keras_model(model)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature(model),
                                          opset=opset, output_path=str(path))
    return {"input": proto.graph.input[0].name, "output": proto.graph.output[0].name,
            "opset": opset}


def run_onnx(path: str | Path, x: np.ndarray, batch: int = 512,
             onnxruntime_options: dict | None = None) -> np.ndarray:
    """Outputs of an ONNX model on CPU; `onnxruntime_options`: a manifest's runtime settings
    (core.runtime.variant_session), for a model not yet in a variant."""
    from core.runtime import make_session

    sess = make_session(path, providers=("cpu",), **(onnxruntime_options or {}))
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def tflite_bytes(model, optimizations=None, representative_data=None,
                 supported_types=None, int8_io: bool = False) -> bytes:
    """Convert with the TFLite converter (still part of TF 2.21)."""
    from core.tf_setup import tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if optimizations:
        conv.optimizations = optimizations
    if representative_data is not None:
        conv.representative_dataset = representative_data
    if supported_types:
        conv.target_spec.supported_types = supported_types
    if int8_io:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def run_tflite(path_or_bytes, x: np.ndarray) -> np.ndarray:
    """Outputs of a .tflite model (file or bytes) on LiteRT, one example at a time: converted
    int8 models can have a fixed batch-1 input."""
    from core.runners import LiteRTModel

    model = LiteRTModel(path_or_bytes, threads=1)
    return np.concatenate([model.predict(row[None]) for row in x]).astype(np.float32)


def export_float(model, directory: str | Path, parity_inputs: np.ndarray,
                 tflite: bool = True) -> dict:
    """Write model.onnx (and model.tflite) into `directory`, parity-checked on real inputs.

    Returns {"onnx": {input, output, opset}, "parity": [reports]} for the manifest.
    """
    directory = Path(directory)
    reference = model(parity_inputs, training=False).numpy()
    info = {"onnx": export_onnx(model, directory / "model.onnx"), "parity": []}
    info["parity"].append(check_parity(reference, run_onnx(directory / "model.onnx",
                                                           parity_inputs), "onnxruntime").as_dict())
    if tflite:
        blob = tflite_bytes(model)
        (directory / "model.tflite").write_bytes(blob)
        info["parity"].append(check_parity(reference, run_tflite(blob, parity_inputs),
                                           "litert").as_dict())
    return info


def export_saved_model(model, directory: str | Path, parity_inputs: np.ndarray) -> dict:
    """Write `saved_model/` (TF SavedModel with a `serving_default` signature) into
    `directory`, reload it and parity-check it like the other float exports."""
    from core.tf_setup import tf

    path = Path(directory) / "saved_model"
    reference = model(parity_inputs, training=False).numpy()
    model.save(str(path), save_format="tf", include_optimizer=False)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    input_name = next(iter(serve.structured_input_signature[1]))
    outputs = serve(**{input_name: tf.constant(parity_inputs)})
    candidate = next(iter(outputs.values())).numpy()
    return {"path": "saved_model", "signature": "serving_default", "input": input_name,
            "parity": check_parity(reference, candidate, "savedmodel").as_dict()}
