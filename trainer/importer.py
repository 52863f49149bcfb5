"""Import a user's own classifier and dataset as a tinyship task and its first variant.

    python -m trainer import --model digits.keras --data photos/ --task digits
    python -m trainer import --model digits.onnx --data digits.csv --task digits --scaling raw

    from trainer.importer import import_model
    variant = import_model("digits.keras", "photos/", "digits")

The model's input spec and output activation are read from the model file (a row of
MODEL_FORMATS per format: Keras `.keras`/`.h5`/SavedModel folder, ONNX); preprocessing comes
from the arguments (or a JSON/YAML file of them) and is stored in the manifest, so that
compress, benchmarks and serve transform inputs exactly as the test accuracy was measured.
The dataset is recorded as a user task (core.userdata). A Keras import gets model.keras,
model.onnx and model.tflite (parity-checked), hence every technique and runtime; an ONNX
import gets model.onnx, hence the ONNX techniques and ONNX Runtime.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.artifacts import (create_variant, default_root, load_variant, update_manifest,
                            variant_dir)
from core.evaluate import predict_probabilities
from core.preprocessing import (PREPROCESSORS, ImagePreprocessor, TextTokenizer,
                                VectorPreprocessor)
from core.userdata import DataSource, ReadReport, describe, iter_batches, scan, task_spec, \
    write_task
from trainer.errors import TrainerInputError

PARITY_EXAMPLES = 200
IMPORT_TECHNIQUE = "import"


class ModelImportError(TrainerInputError):
    """A model tinyship cannot import; the message says what was found and what is supported."""


SUPPORTED = ("a classifier with one input (images NHWC with 1 or 3 channels, token ids, or a "
             "feature vector) and one output (N, classes) ending in softmax, or (N, 1) ending "
             "in sigmoid")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def __str__(self):
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {self.dtype}"


@dataclass
class Signature:
    """What a model file declares: its inputs, outputs and final activation."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    activation: str | None       # "softmax", "sigmoid", or None (linear, logits, unknown)
    last_op: str = ""

    def describe(self) -> str:
        return (f"inputs: {'; '.join(map(str, self.inputs)) or 'none'}; outputs: "
                f"{'; '.join(map(str, self.outputs)) or 'none'}; final operation: "
                f"{self.last_op or 'unknown'}")


# ---------------------------------------------------------------- model formats

@dataclass(frozen=True)
class ModelFormat:
    """One model file format: how to recognise, load, inspect and store it in a variant."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], object]
    signature: Callable[[object], Signature]
    # (model, variant staging dir, parity inputs) -> export details for the manifest
    write: Callable[[object, Path, Path, np.ndarray], dict]


def _keras_detect(path: Path) -> bool:
    return path.suffix.lower() in (".keras", ".h5", ".hdf5") or \
        (path.is_dir() and (path / "saved_model.pb").is_file())


def _keras_load(path: Path):
    from core.evaluate import load_keras

    try:
        return load_keras(path)
    except (ValueError, OSError, TypeError) as e:
        raise ModelImportError(f"{path}: Keras could not load it ({type(e).__name__}: {e}). "
                               f"tinyship reads models saved by tf_keras (Keras 2): "
                               f"model.save('model.keras') or model.save('model.h5')") from None


_KERAS_ACTIVATIONS = {"softmax": "softmax", "sigmoid": "sigmoid"}


def _keras_signature(model) -> Signature:
    def tensor(t, name=None):
        return Tensor(name or t.name.split(":")[0], tuple(t.shape.as_list()), t.dtype.name)

    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    act_name = getattr(activation, "__name__", None) if activation is not None else None
    if type(last).__name__ == "Softmax":
        act_name = "softmax"
    return Signature([tensor(t, n) for t, n in zip(model.inputs, model.input_names)],
                     [tensor(t) for t in model.outputs], _KERAS_ACTIVATIONS.get(act_name),
                     f"{type(last).__name__}({act_name or 'linear'})")


def _keras_write(model, source: Path, directory: Path, parity_x: np.ndarray) -> dict:
    from core.export import export_float

    model.save(directory / "model.keras")
    return export_float(model, directory, parity_x)


def _onnx_detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".onnx"


def _onnx_load(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises its own ValidationError and protobuf DecodeError
        raise ModelImportError(f"{path}: not a valid ONNX model ({type(e).__name__}: {e})") \
            from None
    return model


_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def _onnx_signature(model) -> Signature:
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def tensor(v):
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return Tensor(v.name, dims, _ONNX_DTYPES.get(t.elem_type, f"onnx type {t.elem_type}"))

    inputs = [tensor(v) for v in graph.input if v.name not in initializers]
    outputs = [tensor(v) for v in graph.output]
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name) if graph.output else None
    # Identity/Reshape/Flatten after the activation do not change it.
    while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
        node = producer.get(node.input[0])
    op = node.op_type if node is not None else ""
    return Signature(inputs, outputs, {"Softmax": "softmax", "Sigmoid": "sigmoid"}.get(op), op)


def _onnx_write(model, source: Path, directory: Path, parity_x: np.ndarray) -> dict:
    shutil.copy2(source, directory / "model.onnx")
    return {"onnx": {"source": source.name}}


MODEL_FORMATS: dict[str, ModelFormat] = {f.name: f for f in (
    ModelFormat("keras", _keras_detect, _keras_load, _keras_signature, _keras_write),
    ModelFormat("onnx", _onnx_detect, _onnx_load, _onnx_signature, _onnx_write),
)}


def model_format(path: Path) -> ModelFormat:
    if not path.exists():
        raise ModelImportError(f"{path}: no such file or folder")
    for fmt in MODEL_FORMATS.values():
        if fmt.detect(path):
            return fmt
    raise ModelImportError(f"{path}: not a model file tinyship reads; expected a Keras model "
                           f"(.keras, .h5, a SavedModel folder) or an ONNX model (.onnx)")


# ---------------------------------------------------------------- input kinds

@dataclass(frozen=True)
class Preprocessing:
    """What the user says about the model's preprocessing (flags or a JSON/YAML file)."""

    scaling: str = "minmax"
    mean: tuple[float, ...] | float = 0.0
    std: tuple[float, ...] | float = 1.0
    vocabulary: str | None = None      # text: a JSON list or one token per line (ids 2..)
    ngrams: int = 1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "Preprocessing":
        text = Path(path).read_text()
        try:
            if Path(path).suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:
            raise ModelImportError(f"{path}: unreadable preprocessing file ({e})") from None
        if not isinstance(data, dict):
            raise ModelImportError(f"{path}: a preprocessing file is a mapping of options")
        known = {"scaling", "mean", "std", "vocabulary", "ngrams"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelImportError(f"{path}: unknown preprocessing option(s) {unknown}; valid: "
                                   f"{', '.join(sorted(known))}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def _image_preprocessor(inp: Tensor, options: Preprocessing, listing) -> ImagePreprocessor:
    _, h, w, c = inp.shape
    if c not in (1, 3):
        hint = " (it looks channels-first, NCHW; export it channels-last, NHWC)" \
            if h in (1, 3) else ""
        raise ModelImportError(f"input {inp} has {c} channels{hint}; supported: "
                               f"NHWC images with 1 or 3 channels")
    if h is None or w is None:
        if listing.image is None:
            raise ModelImportError(f"input {inp} has no fixed height and width, and the dataset "
                                   f"has no image size")
        h, w = listing.image[:2]
    try:
        return ImagePreprocessor(options.scaling, options.mean, options.std, h, w, c)
    except ValueError as e:
        raise ModelImportError(f"preprocessing: {e}") from None


def _text_preprocessor(inp: Tensor, options: Preprocessing, listing) -> TextTokenizer:
    if options.vocabulary is None:
        raise ModelImportError(f"input {inp} takes token ids: give the vocabulary the model was "
                               f"trained with (--vocabulary FILE: a JSON list or one token per "
                               f"line, the first token has id 2; 0 is padding, 1 unknown)")
    text = Path(options.vocabulary).read_text(encoding="utf-8")
    try:
        vocab = json.loads(text)
    except json.JSONDecodeError:
        vocab = [line.rstrip("\n") for line in text.splitlines() if line.strip()]
    if inp.shape[1] is None:
        raise ModelImportError(f"input {inp} has no fixed length; export it with a fixed "
                               f"sequence length")
    return TextTokenizer([str(t) for t in vocab], int(inp.shape[1]), int(options.ngrams))


def _vector_preprocessor(inp: Tensor, options: Preprocessing, listing) -> VectorPreprocessor:
    return VectorPreprocessor()


def input_kind(inp: Tensor) -> str:
    if len(inp.shape) == 4:
        return "image"
    if len(inp.shape) == 2:
        return "text" if inp.dtype.startswith("int") else "vector"
    raise ModelImportError(f"input {inp}: rank {len(inp.shape)} is not supported; {SUPPORTED}")


# input kind -> the preprocessor an imported model of that kind gets
PREPROCESSOR_FOR_KIND = {"image": _image_preprocessor, "text": _text_preprocessor,
                         "vector": _vector_preprocessor}
assert set(PREPROCESSOR_FOR_KIND) == set(PREPROCESSORS)


# ---------------------------------------------------------------- checks

def check_signature(sig: Signature, path: Path) -> tuple[Tensor, Tensor, str]:
    """(input, output, activation) of a single-input classifier, else a clear error."""
    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        raise ModelImportError(f"{path}: found {len(sig.inputs)} input(s) and "
                               f"{len(sig.outputs)} output(s) ({sig.describe()}); supported: "
                               f"{SUPPORTED}")
    inp, out = sig.inputs[0], sig.outputs[0]
    if len(out.shape) != 2 or out.shape[1] is None:
        raise ModelImportError(f"{path}: output {out} is not (batch, classes) ({sig.describe()}); "
                               f"supported: {SUPPORTED}")
    width = out.shape[1]
    if sig.activation is None:
        what = "a regression model" if width == 1 else "logits or scores, not probabilities"
        raise ModelImportError(
            f"{path}: the output is {what} (final operation {sig.last_op or 'unknown'}; "
            f"{sig.describe()}). Supported: {SUPPORTED}; add a softmax (or sigmoid) layer at "
            f"the end and export again")
    if sig.activation == "sigmoid" and width != 1:
        raise ModelImportError(f"{path}: a sigmoid output with {width} columns is multi-label; "
                               f"supported: {SUPPORTED}")
    input_kind(inp)
    return inp, out, sig.activation


def check_labels(labels: tuple[str, ...], width: int, activation: str, data: str) -> None:
    classes = 2 if activation == "sigmoid" else width
    if len(labels) != classes:
        raise ModelImportError(
            f"the model has {classes} classes (output width {width}, {activation}) but the "
            f"dataset {data} has {len(labels)} ({', '.join(labels[:10])}"
            f"{', ...' if len(labels) > 10 else ''}). Give the dataset one class per model "
            f"output, or a labels file (--labels) naming the model's classes in output order")


def _check_kinds(model_kind: str, data_kind: str, inp: Tensor, listing) -> None:
    if model_kind != data_kind:
        raise ModelImportError(f"the model takes {model_kind} inputs ({inp}) but the dataset "
                               f"holds {data_kind} data; give a dataset of {model_kind}s")
    if model_kind == "vector":
        features = listing.arrays["train"].shape[1]
        if inp.shape[1] not in (None, features):
            raise ModelImportError(f"the model takes {inp.shape[1]} features ({inp}) but the "
                                   f"dataset rows have {features}")


# ---------------------------------------------------------------- import

def default_variant_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem if path.is_file() else path.name) \
        .lstrip("._") or "imported"


def evaluate_streamed(runner, preprocess, source: DataSource, split: str = "test",
                      batch: int = 256) -> tuple[float, int, ReadReport]:
    """Top-1 accuracy on a split read batch by batch (a folder is never held whole)."""
    report, correct, n = ReadReport(), 0, 0
    for x, y in iter_batches(source, split, batch, report):
        probs = predict_probabilities(runner, preprocess(x), batch)
        correct += int((probs.argmax(axis=1) == y).sum())
        n += len(y)
    if n == 0:
        raise ModelImportError(f"{source.path}: no readable {split} examples ({report.summary()})")
    return correct / n, n, report


def import_model(model_path: str | Path, data_path: str | Path, task: str, *,
                 preprocessing: Preprocessing | None = None, labels_file: str | None = None,
                 label_column: str = "label", test_fraction: float = 0.2, seed: int = 0,
                 variant: str | None = None, artifacts=None, log=print):
    """Import a classifier and its dataset as task `task`; returns the written Variant with its
    measured test accuracy."""
    from core.runners import open_runner

    model_path = Path(model_path).expanduser()
    artifacts = Path(artifacts) if artifacts is not None else default_root()
    options = preprocessing or Preprocessing()
    fmt = model_format(model_path)
    model = fmt.load(model_path)
    inp, out, activation = check_signature(fmt.signature(model), model_path)
    kind = input_kind(inp)

    source = DataSource.detect(data_path, labels_file=labels_file, label_column=label_column,
                               test_fraction=test_fraction, seed=seed)
    if kind == "image":
        source = source.with_image((inp.shape[1], inp.shape[2], inp.shape[3])) \
            if None not in inp.shape[1:] else source
    listing = scan(source)
    _check_kinds(kind, listing.kind, inp, listing)
    check_labels(listing.labels, out.shape[1], activation, str(data_path))
    preprocess = PREPROCESSOR_FOR_KIND[kind](inp, options, listing)
    if kind == "image" and source.image is None:
        source = source.with_image(preprocess.input_shape)
    log(describe(source))

    spec = task_spec(task, source)
    name = variant or default_variant_name(model_path)
    parity_x = preprocess(next(iter_batches(source, "test", PARITY_EXAMPLES))[0])
    parity_x = parity_x.astype(inp.dtype, copy=False)
    with create_variant(
            artifacts, task=task, model=name, variant=name,
            lineage={"parent": None, "technique": IMPORT_TECHNIQUE,
                     "params": {"source": str(model_path.resolve()), "format": fmt.name}},
            input={"shape": [None, *inp.shape[1:]] if kind != "image" else
                   [None, *preprocess.input_shape], "dtype": inp.dtype, "kind": kind},
            output={"activation": activation}, preprocessing=preprocess.to_config(),
            labels=list(listing.labels), extra={"import": {"data": source.to_dict()}}) as v:
        v.extra["export"] = fmt.write(model, model_path, v.dir, parity_x)
        if isinstance(preprocess, TextTokenizer):
            preprocess.save_vocabulary(v.dir)
    write_task(artifacts, spec)
    written = load_variant(variant_dir(artifacts, task, name))
    report = ReadReport()
    for _ in iter_batches(source, "train", 1024, report):  # every file read once, for the count
        pass
    with open_runner(written, "onnx") as runner:
        acc, n, test_report = evaluate_streamed(runner, written.preprocessor(), source)
    report.unreadable += test_report.unreadable
    written = update_manifest(written, metrics={
        "test_accuracy": acc, "n_test": n, "n_train": listing.count("train"),
        "data_source": f"{source.path} ({source.format}, test)", "unreadable": len(report.unreadable)})
    log(f"{task}/{name}: test accuracy {acc:.4f} on {n:,} examples ({report.summary()}) -> "
        f"{written.path}")
    return written
