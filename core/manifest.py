"""The typed manifest of a model variant: one frozen, versioned record, read and written here only.

    m = Manifest.read(path)                 # migrates older versions, or fails naming the fix
    m.input.height, m.input.channels        # image inputs of any size and channel count
    probs = m.output.probabilities(y)       # (N, classes) for softmax and sigmoid heads alike
    core.artifacts.write_manifest(path, m)  # atomic, in the current schema

Schema (version 2; what each field means):

    schema_version  int, SCHEMA_VERSION
    task, model, variant, created (ISO-8601 UTC)
    lineage         parent variant (or null), technique, params, and teacher (the variant
                    whose outputs were distillation targets; only when there was one)
    input           tensor name, dtype, shape ([null, ...], batch first), kind:
                    "image" (NHWC: height, width, channels), "text" (token ids; the tokenizer is
                    the preprocessing section) or "vector"
    output          tensor name, width (columns of the model's output), activation
                    ("softmax": one column per label; "sigmoid": one column, p(label 1))
    preprocessing   core.preprocessing config ({"type": "image"|"text"|"vector", ...})
    labels          label names, index = class id
    metrics         {"test_accuracy": float, ...}
    files           {relative path: {"sha256", "bytes"}} for every file but the manifest
    extra           free-form details (recipe, export parity, profile, ...)
    runtime         settings a runtime must use to run the model as it was measured,
                    {"onnxruntime": {"disabled_optimizers": [...]}}; see core.runtime

Version 1 (before input.kind and output.width) is migrated on read: the kind is the
preprocessing type and the width follows from the activation and the labels. TensorFlow-free.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
INPUT_KINDS = ("image", "text", "vector")
# The techniques that make a task's first variants (no parent): a model trained here, or a
# user's model imported. Compression starts from these, and measures against them.
ROOT_TECHNIQUES = ("train", "import")
ACTIVATIONS = ("softmax", "sigmoid")
REQUIRED_FIELDS = ("schema_version", "task", "model", "variant", "lineage", "input",
                   "output", "preprocessing", "labels", "metrics", "files")


class ArtifactError(Exception):
    """A variant or manifest that does not satisfy the contract; the message names the file
    and the fix. Raised here and by core.artifacts."""


def _frozen(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


def plain(value: Any) -> Any:
    """JSON-ready copy: mappings and tuples of the frozen record become dicts and lists, numpy
    values Python ones, paths strings (core.artifacts writes every JSON file through this)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays in metrics
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class InputSpec:
    """The model's one input tensor. Shapes are batch-first with the batch dimension None."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    kind: str

    def __post_init__(self):
        if self.kind not in INPUT_KINDS:
            raise ArtifactError(f"input kind {self.kind!r}; valid: {', '.join(INPUT_KINDS)}")
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if self.kind == "image" and len(self.shape) != 4:
            raise ArtifactError(f"an image input has shape [batch, height, width, channels], "
                                f"got {list(self.shape)}")

    @property
    def example_shape(self) -> tuple[int | None, ...]:
        """The shape of one example (the shape without the batch dimension)."""
        return self.shape[1:]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def height(self) -> int | None:
        return self.shape[1] if self.kind == "image" else None

    @property
    def width(self) -> int | None:
        return self.shape[2] if self.kind == "image" else None

    @property
    def channels(self) -> int | None:
        return self.shape[3] if self.kind == "image" else None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "kind": self.kind}

    @classmethod
    def from_dict(cls, d: Mapping) -> "InputSpec":
        return cls(str(d["name"]), str(d.get("dtype", "float32")), tuple(d["shape"]),
                   str(d["kind"]))


@dataclass(frozen=True)
class OutputSpec:
    """The model's output tensor and how its columns become class probabilities."""

    name: str
    width: int
    activation: str = "softmax"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ArtifactError(f"output activation {self.activation!r}; valid: "
                                f"{', '.join(ACTIVATIONS)}")
        if self.activation == "sigmoid" and self.width != 1:
            raise ArtifactError(f"a sigmoid output has one column, got width {self.width}")

    @staticmethod
    def width_for(activation: str, num_labels: int) -> int:
        return 1 if activation == "sigmoid" else int(num_labels)

    def probabilities(self, outputs) -> np.ndarray:
        """(N, width) model outputs -> (N, classes) probabilities.

        Softmax outputs are already probabilities; a one-column sigmoid p(1) becomes
        [1 - p, p], so every consumer can take argmax and per-class scores the same way.
        """
        return probabilities(outputs)

    def to_dict(self) -> dict:
        return {"name": self.name, "width": self.width, "activation": self.activation}

    @classmethod
    def from_dict(cls, d: Mapping) -> "OutputSpec":
        return cls(str(d["name"]), int(d["width"]), str(d.get("activation", "softmax")))


def probabilities(outputs) -> np.ndarray:
    """The one conversion of raw classifier outputs to (N, classes) probabilities: (N, C)
    softmax stays as it is (no copy: serve runs this on every answer); (N, 1) sigmoid becomes
    (N, 2) [p(0), p(1)]. For callers holding raw outputs without a manifest (export parity
    checks); `OutputSpec.probabilities` is the same."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


@dataclass(frozen=True)
class Lineage:
    parent: str | None
    technique: str
    params: Mapping = field(default_factory=dict)
    # The variant whose outputs were training targets (distillation), or None. Optional and
    # written only when set, so version-2 manifests without it read unchanged.
    teacher: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "params", _frozen(self.params))

    @property
    def is_root(self) -> bool:
        """A task's first variant (trained or imported), which compression starts from."""
        return self.parent is None and self.technique in ROOT_TECHNIQUES

    def to_dict(self) -> dict:
        out = {"parent": self.parent, "technique": self.technique, "params": plain(self.params)}
        if self.teacher is not None:
            out["teacher"] = self.teacher
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "Lineage":
        for key in ("parent", "technique"):
            if key not in d:
                raise ArtifactError(f"lineage must have {key!r}, got keys {sorted(d)}")
        teacher = d.get("teacher")
        if teacher is not None and not isinstance(teacher, str):
            raise ArtifactError(f"lineage teacher must be a variant name, got {teacher!r}")
        return cls(d.get("parent"), str(d["technique"]), d.get("params", {}), teacher)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    task: str
    model: str
    variant: str
    lineage: Lineage
    input: InputSpec
    output: OutputSpec
    preprocessing: Mapping
    labels: tuple[str, ...]
    metrics: Mapping = field(default_factory=dict)
    files: Mapping = field(default_factory=dict)        # rel path -> FileEntry
    extra: Mapping = field(default_factory=dict)
    runtime: Mapping = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        for name in ("preprocessing", "metrics", "extra", "runtime"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "files", _frozen(
            {k: v if isinstance(v, FileEntry) else FileEntry(str(v["sha256"]), int(v["bytes"]))
             for k, v in self.files.items()}))
        if (self.output.activation == "softmax"
                and self.output.width != len(self.labels)):
            raise ArtifactError(f"output width {self.output.width} != {len(self.labels)} labels")

    # ---- reading the facts every consumer needs

    @property
    def preprocessing_type(self) -> str:
        return str(self.preprocessing.get("type", "unknown"))

    @property
    def onnxruntime_options(self) -> dict:
        """The ONNX Runtime settings this variant must run with ({} when it has none)."""
        return plain(self.runtime.get("onnxruntime", {}))

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    # ---- (de)serialization

    def to_dict(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION, "task": self.task, "model": self.model,
               "variant": self.variant, "created": self.created,
               "lineage": self.lineage.to_dict(), "input": self.input.to_dict(),
               "output": self.output.to_dict(), "preprocessing": plain(self.preprocessing),
               "labels": list(self.labels), "metrics": plain(self.metrics),
               "files": {k: {"sha256": f.sha256, "bytes": f.bytes}
                         for k, f in sorted(self.files.items())},
               "extra": plain(self.extra)}
        if self.runtime:
            out["runtime"] = plain(self.runtime)
        return out

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "manifest") -> "Manifest":
        """Validate (and migrate) a parsed manifest; errors name `source` and what to do."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{source}: expected a JSON object")
        version = d.get("schema_version")
        if version is None:
            raise ArtifactError(f"{source}: no schema_version; expected {SCHEMA_VERSION}. "
                                f"Re-create the variant (make train compress)")
        if version not in MIGRATIONS and version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: unknown schema_version {version!r}; this toolkit reads versions "
                f"{', '.join(map(str, sorted([*MIGRATIONS, SCHEMA_VERSION])))}. It was written "
                f"by another version of tinyship: re-create it (make train compress)")
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise ArtifactError(f"{source}: missing field(s) {', '.join(missing)}")
        d = dict(d)
        while d["schema_version"] != SCHEMA_VERSION:
            d = MIGRATIONS[d["schema_version"]](d)
        try:
            if not isinstance(d["labels"], list) or not d["labels"]:
                raise ArtifactError(f"labels must be a non-empty list, got {d['labels']!r}")
            return cls(task=str(d["task"]), model=str(d["model"]), variant=str(d["variant"]),
                       lineage=Lineage.from_dict(d["lineage"]),
                       input=InputSpec.from_dict(d["input"]),
                       output=OutputSpec.from_dict(d["output"]),
                       preprocessing=d["preprocessing"], labels=tuple(d["labels"]),
                       metrics=d.get("metrics") or {}, files=d.get("files") or {},
                       extra=d.get("extra") or {}, runtime=d.get("runtime") or {},
                       created=str(d.get("created", "")))
        except ArtifactError as e:
            raise ArtifactError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{source}: malformed manifest ({type(e).__name__}: {e}); "
                                f"re-create the variant (make train compress)") from None

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{path}: manifest is missing; {Path(directory)} is not a "
                                f"model variant")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, str(path))


def _migrate_v1(d: dict) -> dict:
    """Version 1 had no input kind and no output width: both follow from the other fields."""
    d = dict(d)
    kind = (d.get("preprocessing") or {}).get("type")
    d["input"] = {**d["input"], "kind": kind if kind in INPUT_KINDS else "vector"}
    activation = d["output"].get("activation", "softmax")
    labels = d["labels"] if isinstance(d["labels"], list) else []
    d["output"] = {**d["output"], "activation": activation,
                   "width": OutputSpec.width_for(activation, len(labels))}
    d["schema_version"] = 2
    return d


# schema version -> function that turns a manifest of that version into the next version.
MIGRATIONS = {1: _migrate_v1}
