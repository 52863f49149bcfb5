"""The artifact contract: one model variant = one directory + `manifest.json`.

Every part of the toolkit reads and writes variants through this module only:
`trainer` writes the first variant of a model, `compress` derives new variants from it,
`benchmarks` measures them and `serve` loads the selected one. TensorFlow-free.

Layout of an artifact root (default `artifacts/`):

    artifacts/
      <task>/
        <variant>/             one model variant
          manifest.json        schema below
          model.onnx, model.tflite, keras/..., vocab.json, history.json, ...
        selected.json          which variant `serve` uses for this task (written by compress)

The manifest is `core.manifest.Manifest` (schema and migrations there); `Variant.manifest`
is that typed, frozen record, and nothing outside `core` reads manifest.json itself.

Writes are atomic: a variant is assembled in a hidden temp directory beside its final
place and renamed into place only when complete, so an interrupted write leaves nothing
that looks like a variant. Loading verifies the schema and every file's checksum.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.manifest import (MANIFEST, SCHEMA_VERSION, ArtifactError, FileEntry, InputSpec,  # noqa: F401
                           Lineage, Manifest, OutputSpec, plain)

SELECTED = "selected.json"
# Which file of a variant each runtime needs (core.runners opens them).
MODEL_FILES = {"keras": "model.keras", "litert": "model.tflite", "onnx": "model.onnx"}
# The runtimes a deployment runs, without TensorFlow: what compress selects among for the CPU
# placement, what serve opens, and whose speed the CI gate judges.
SERVING_RUNTIMES = ("onnx", "litert")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TMP_PREFIX = ".tmp-"


def default_root() -> Path:
    """The artifact root when none is given: `ARTIFACTS_DIR`, else `artifacts`. Read at call
    time, so every command line honours the variable however it was started."""
    return Path(os.environ.get("ARTIFACTS_DIR") or "artifacts")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ArtifactError(
            f"invalid {kind} name {name!r}: use letters, digits and _ . + - "
            "(no slashes, not starting with a dot)"
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_table(directory: Path) -> dict[str, FileEntry]:
    table = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            table[rel] = FileEntry(sha256_file(p), p.stat().st_size)
    return table


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        json.dump(plain(data), f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def onnx_io_names(path: str | Path) -> tuple[str, str] | None:
    """(first input, first output) tensor names of an ONNX file, read from its graph; None
    for a file that is not an ONNX model (it has no tensors to name; loading it fails later,
    with the runtime's message). The manifest takes the names from here when a variant is
    written, so it can never name a tensor its model.onnx does not have."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except (DecodeError, ValueError, RuntimeError):
        return None
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if not inputs or not graph.output:
        raise ArtifactError(f"{path}: the ONNX graph has no input or no output")
    return inputs[0], graph.output[0].name


def write_manifest(directory: str | Path, manifest: Manifest) -> None:
    _write_json_atomic(Path(directory) / MANIFEST, manifest.to_dict())


@dataclass(frozen=True)
class Variant:
    """A loaded, verified variant: its directory and typed manifest."""

    path: Path
    manifest: Manifest

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def name(self) -> str:
        return self.manifest.variant

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def metrics(self) -> dict:
        return dict(self.manifest.metrics)

    @property
    def extra(self) -> dict:
        return dict(self.manifest.extra)

    @property
    def lineage(self) -> Lineage:
        return self.manifest.lineage

    @property
    def input(self) -> InputSpec:
        return self.manifest.input

    @property
    def output(self) -> OutputSpec:
        return self.manifest.output

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest.files)

    @property
    def onnxruntime_options(self) -> dict:
        """The manifest's ONNX Runtime settings for model.onnx ({} when it has none)."""
        return self.manifest.onnxruntime_options

    def file(self, rel: str) -> Path:
        """Path of a file listed in the manifest; a clear error when it is not there."""
        if rel not in self.manifest.files:
            listed = ", ".join(self.files) or "none"
            raise ArtifactError(f"{self.path}: variant has no file {rel!r} (files: {listed})")
        return self.path / rel

    def has_file(self, rel: str) -> bool:
        return rel in self.manifest.files

    def preprocessor(self):
        from core.preprocessing import preprocessor_from_config

        return preprocessor_from_config(dict(self.manifest.preprocessing), self.path)

    def size_bytes(self, rel: str) -> int:
        return int(self.manifest.files[rel].bytes)


class VariantBuilder:
    """Staging area handed out by `create_variant`: write files into `.dir`; `metrics`,
    `extra`, `params` (the lineage's) and `runtime` are plain dicts to fill in. The manifest is
    assembled from them, the files and the ONNX graph's tensor names when the block ends."""

    def __init__(self, directory: Path, manifest: Manifest):
        self.dir = directory
        self._manifest = manifest
        self.metrics = dict(manifest.metrics)
        self.extra = dict(manifest.extra)
        self.params = dict(manifest.lineage.params)
        self.runtime = dict(manifest.runtime)

    def path(self, rel: str) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def copy_in(self, src: str | Path, rel: str | None = None) -> Path:
        src = Path(src)
        dst = self.path(rel or src.name)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
        return dst

    def build(self) -> Manifest:
        m = self._manifest
        inp, out = m.input, m.output
        names = onnx_io_names(self.dir / "model.onnx") if (self.dir / "model.onnx").is_file() \
            else None
        if names is not None:
            in_name, out_name = names
            inp = InputSpec(in_name, inp.dtype, inp.shape, inp.kind)
            out = OutputSpec(out_name, out.width, out.activation)
        return m.replace(input=inp, output=out, metrics=self.metrics, extra=self.extra,
                         runtime=self.runtime, files=_file_table(self.dir),
                         lineage=Lineage(m.lineage.parent, m.lineage.technique, self.params,
                                         m.lineage.teacher))


def _input_spec(spec: InputSpec | dict, preprocessing: dict) -> InputSpec:
    if isinstance(spec, InputSpec):
        return spec
    if "shape" not in spec:
        raise ArtifactError(f"input spec {spec!r} has no shape; expected name, dtype, shape "
                            f"(batch first, e.g. [None, 28, 28, 1]) and kind")
    kind = spec.get("kind") or preprocessing.get("type")
    return InputSpec.from_dict({"name": "input", **spec, "kind": kind})


def _output_spec(spec: OutputSpec | dict, labels) -> OutputSpec:
    if isinstance(spec, OutputSpec):
        return spec
    activation = spec.get("activation", "softmax")
    return OutputSpec.from_dict({"name": "output", "activation": activation,
                                 "width": OutputSpec.width_for(activation, len(labels)), **spec})


def variant_dir(root: str | Path, task: str, variant: str) -> Path:
    _check_name("task", task)
    _check_name("variant", variant)
    return Path(root) / task / variant


@contextmanager
def create_variant(
    root: str | Path,
    *,
    task: str,
    model: str,
    variant: str,
    lineage: Lineage | dict,
    input: InputSpec | dict,
    output: OutputSpec | dict,
    preprocessing: dict,
    labels: list[str],
    metrics: dict | None = None,
    extra: dict | None = None,
    runtime: dict | None = None,
    overwrite: bool = True,
) -> Iterator[VariantBuilder]:
    """Assemble a variant atomically.

        with create_variant(root, task=..., model=..., ...) as v:
            keras_model.save(v.path("model.keras"))
            v.metrics["test_accuracy"] = 0.91
        # here the variant exists, complete, with checksums; on an exception nothing does.

    `input`/`output` may be specs or dicts; a dict's missing `kind` is the preprocessing type
    and a missing `width` follows from the activation and the labels. Tensor names are read
    from model.onnx when the variant has one.
    """
    final = variant_dir(root, task, variant)
    if final.exists() and not overwrite:
        raise ArtifactError(f"{final} already exists (pass overwrite=True to replace it)")
    preprocessing = dict(preprocessing)
    manifest = Manifest(
        task=task, model=model, variant=variant,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        lineage=lineage if isinstance(lineage, Lineage) else Lineage.from_dict(lineage),
        input=_input_spec(input, preprocessing), output=_output_spec(output, labels),
        preprocessing=preprocessing, labels=tuple(labels), metrics=metrics or {},
        extra=extra or {}, runtime=runtime or {})
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{_TMP_PREFIX}{variant}.{uuid.uuid4().hex}"
    staging.mkdir()
    builder = VariantBuilder(staging, manifest)
    try:
        yield builder
        built = builder.build()
        if not built.files:
            raise ArtifactError(f"variant {task}/{variant} has no files; write the model first")
        write_manifest(staging, built)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, final: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first,
    # so readers see either the old complete variant or the new complete one.
    old = None
    if final.exists():
        old = final.parent / f"{_TMP_PREFIX}old-{final.name}.{uuid.uuid4().hex}"
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_variant(root: str | Path, task: str, variant: str) -> bool:
    """Delete a variant if it exists (renamed aside first, so no reader ever sees half of it);
    returns whether there was one."""
    final = variant_dir(root, task, variant)
    if not final.exists():
        return False
    gone = final.parent / f"{_TMP_PREFIX}removed-{final.name}.{uuid.uuid4().hex}"
    os.rename(final, gone)
    shutil.rmtree(gone, ignore_errors=True)
    return True


def read_manifest(path: str | Path) -> Manifest:
    """Parse, validate and migrate a variant's manifest without checking file checksums."""
    return Manifest.read(path)


def load_variant(path: str | Path, verify: bool = True) -> Variant:
    """Load a variant; with `verify`, fail on any missing file or checksum mismatch."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        for rel, info in manifest.files.items():
            fpath = path / rel
            if not fpath.is_file():
                raise ArtifactError(f"{fpath}: listed in {path / MANIFEST} but missing")
            digest = sha256_file(fpath)
            if digest != info.sha256:
                raise ArtifactError(
                    f"{fpath}: checksum mismatch (manifest {info.sha256[:12]}..., "
                    f"file {digest[:12]}...); the file changed after the variant was written"
                )
    return Variant(path, manifest)


def update_manifest(variant: Variant, *, metrics: dict | None = None,
                    extra: dict | None = None) -> Variant:
    """Merge new metrics/extra into a variant's manifest (atomic replace of manifest.json).

    Model files are not touched, so their checksums stay valid. An older manifest is written
    back in the current schema.
    """
    manifest = read_manifest(variant.path)
    manifest = manifest.replace(metrics={**manifest.metrics, **(metrics or {})},
                                extra={**manifest.extra, **(extra or {})})
    write_manifest(variant.path, manifest)
    return Variant(variant.path, manifest)


def list_variants(root: str | Path | None = None, task: str | None = None,
                  verify: bool = False) -> list[Variant]:
    """All variants under `root` (default: `default_root()`), optionally of one task, sorted
    by task then name."""
    root = Path(root) if root is not None else default_root()
    if not root.is_dir():
        return []
    tasks = [root / task] if task else sorted(p for p in root.iterdir() if p.is_dir())
    out = []
    for tdir in tasks:
        if not tdir.is_dir() or tdir.name.startswith("."):
            continue
        for vdir in sorted(tdir.iterdir()):
            if vdir.is_dir() and not vdir.name.startswith(".") and (vdir / MANIFEST).exists():
                out.append(load_variant(vdir, verify=verify))
    return out


def find_variant(root: str | Path, task: str, variant: str, verify: bool = True) -> Variant:
    path = variant_dir(root, task, variant)
    if not (path / MANIFEST).exists():
        known = [v.name for v in list_variants(root, task)]
        raise ArtifactError(
            f"no variant {variant!r} for task {task!r} under {Path(root)}; "
            f"known: {', '.join(known) or 'none (train one first: make train)'}"
        )
    return load_variant(path, verify=verify)


def select_variant(root: str | Path, task: str, variant: str, reason: dict | None = None,
                   runtime: str = "onnx") -> Path:
    """Record which variant of a task `serve` should use, on which runtime (SERVING_RUNTIMES:
    "onnx" or "litert")."""
    found = find_variant(root, task, variant, verify=False)
    if runtime not in SERVING_RUNTIMES:
        raise ArtifactError(f"{task}/{variant} cannot be served on {runtime!r}: unknown runtime; "
                            f"valid: {', '.join(SERVING_RUNTIMES)}")
    if not found.has_file(MODEL_FILES[runtime]):
        raise ArtifactError(f"{task}/{variant} cannot be served on {runtime!r}: it has no "
                            f"{MODEL_FILES[runtime]}")
    path = Path(root) / task / SELECTED
    _write_json_atomic(path, {"task": task, "variant": variant, "runtime": runtime,
                              "reason": reason or {},
                              "selected_at": _dt.datetime.now(_dt.timezone.utc)
                              .isoformat(timespec="seconds")})
    return path


def selection_record(root: str | Path, task: str) -> dict:
    """The task's selected.json as written by `select_variant` (a clear error when missing)."""
    path = Path(root) / task / SELECTED
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no variant selected for task {task!r}; run `make compress` "
                            f"(or `python -m compress select`) first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable selection record ({e})") from None
    if not isinstance(record, dict):
        raise ArtifactError(f"{path}: unreadable selection record (not a JSON object)")
    return record


def selected_runtime(root: str | Path, task: str) -> str:
    """The runtime the selection record names ("onnx" for records written before runtimes were
    selected)."""
    return str(selection_record(root, task).get("runtime", "onnx"))


def selected_placements(root: str | Path, task: str) -> dict:
    """{placement: choice} of the selection record ({} for records without placements); a
    measured choice names variant, runtime and provider."""
    reason = selection_record(root, task).get("reason") or {}
    return dict(reason.get("placements") or {})


def selected_variant(root: str | Path, task: str, verify: bool = True) -> Variant:
    """The variant recorded by `select_variant`; a clear error when none was selected."""
    path = Path(root) / task / SELECTED
    if not path.is_file():
        raise ArtifactError(
            f"{path}: no variant selected for task {task!r}; run `make compress` "
            f"(or `python -m compress select`) first"
        )
    try:
        record = json.loads(path.read_text())
        name = record["variant"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: unreadable selection record ({e})") from None
    return find_variant(root, task, name, verify=verify)


def clean_stale_temporaries(root: str | Path | None = None) -> list[Path]:
    """Remove staging directories left behind by a killed process (not by an exception)."""
    removed = []
    root = Path(root) if root is not None else default_root()
    if root.is_dir():
        for p in root.glob(f"*/{_TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
