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

Manifest (schema_version 1):

    schema_version  int, SCHEMA_VERSION
    task            task name (trainer.tasks)
    model           model-zoo name the variant descends from (e.g. "fashion_cnn")
    variant         directory name, unique within the task
    created         ISO-8601 UTC time
    lineage         {"parent": variant name or null, "technique": str, "params": {...}}
    input           {"name": str, "shape": [None, ...], "dtype": "float32"|"int32"}
    output          {"name": str, "activation": "softmax"|"sigmoid"}
    preprocessing   trainer.preprocessing config ({"type": "image"|"text"|"vector", ...})
    labels          list of human label names, index = class id
    metrics         {"test_accuracy": float, ...}
    files           {relative path: {"sha256": hex, "bytes": int}} for every file but the manifest
    extra           free-form details (recipe, per-layer sparsity, ...)
    runtime         optional settings a runtime must use to run the model as it was measured,
                    e.g. {"onnxruntime": {"disabled_optimizers": ["QDQPropagationTransformer"]}};
                    every ONNX session is opened through trainer.runtime.variant_session

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

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SELECTED = "selected.json"
DEFAULT_ROOT = Path(os.environ.get("ARTIFACTS_DIR", "artifacts"))

REQUIRED_FIELDS = ("schema_version", "task", "model", "variant", "lineage", "input",
                   "output", "preprocessing", "labels", "metrics", "files")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TMP_PREFIX = ".tmp-"


class ArtifactError(Exception):
    """A variant directory that does not satisfy the contract; the message names the file."""


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


def _file_table(directory: Path) -> dict[str, dict]:
    table = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            table[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return table


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(obj):
    # numpy scalars and arrays end up in metrics; keep this module numpy-free at import.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def onnxruntime_options(manifest: dict) -> dict:
    """The ONNX Runtime settings a manifest asks for ({} when it has none)."""
    return dict(manifest.get("runtime", {}).get("onnxruntime", {}))


@dataclass(frozen=True)
class Variant:
    """A loaded, verified variant: its directory and manifest."""

    path: Path
    manifest: dict

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def name(self) -> str:
        return self.manifest["variant"]

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def metrics(self) -> dict:
        return dict(self.manifest.get("metrics", {}))

    @property
    def lineage(self) -> dict:
        return dict(self.manifest["lineage"])

    @property
    def onnxruntime_options(self) -> dict:
        """The manifest's ONNX Runtime settings for model.onnx ({} when it has none)."""
        return onnxruntime_options(self.manifest)

    def file(self, rel: str) -> Path:
        """Path of a file listed in the manifest; a clear error when it is not there."""
        if rel not in self.manifest["files"]:
            listed = ", ".join(sorted(self.manifest["files"])) or "none"
            raise ArtifactError(f"{self.path}: variant has no file {rel!r} (files: {listed})")
        return self.path / rel

    def has_file(self, rel: str) -> bool:
        return rel in self.manifest["files"]

    def preprocessor(self):
        from trainer.preprocessing import preprocessor_from_config

        return preprocessor_from_config(self.manifest["preprocessing"], self.path)

    def size_bytes(self, rel: str) -> int:
        return int(self.manifest["files"][rel]["bytes"])


class VariantBuilder:
    """Staging area handed out by `create_variant`: write files into `.dir`, fill `.manifest`."""

    def __init__(self, directory: Path, manifest: dict):
        self.dir = directory
        self.manifest = manifest

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
    lineage: dict,
    input: dict,
    output: dict,
    preprocessing: dict,
    labels: list[str],
    metrics: dict | None = None,
    extra: dict | None = None,
    overwrite: bool = True,
) -> Iterator[VariantBuilder]:
    """Assemble a variant atomically.

        with create_variant(root, task=..., model=..., ...) as v:
            keras_model.save(v.path("keras/model.keras"))
            v.manifest["metrics"]["test_accuracy"] = 0.91
        # here the variant exists, complete, with checksums; on an exception nothing does.
    """
    final = variant_dir(root, task, variant)
    if final.exists() and not overwrite:
        raise ArtifactError(f"{final} already exists (pass overwrite=True to replace it)")
    for key in ("parent", "technique"):
        if key not in lineage:
            raise ArtifactError(f"lineage must have {key!r}, got keys {sorted(lineage)}")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{_TMP_PREFIX}{variant}.{uuid.uuid4().hex}"
    staging.mkdir()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "model": model,
        "variant": variant,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lineage": {"parent": lineage.get("parent"), "technique": lineage["technique"],
                    "params": dict(lineage.get("params", {}))},
        "input": dict(input),
        "output": dict(output),
        "preprocessing": dict(preprocessing),
        "labels": list(labels),
        "metrics": dict(metrics or {}),
        "files": {},
        "extra": dict(extra or {}),
    }
    builder = VariantBuilder(staging, manifest)
    try:
        yield builder
        builder.manifest["files"] = _file_table(staging)
        if not builder.manifest["files"]:
            raise ArtifactError(f"variant {task}/{variant} has no files; write the model first")
        _write_json_atomic(staging / MANIFEST, builder.manifest)
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


def read_manifest(path: str | Path) -> dict:
    """Parse and validate a manifest without checking file checksums."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: manifest is missing; {Path(path)} is not a model variant")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: expected a JSON object")
    version = manifest.get("schema_version")
    if version is None:
        raise ArtifactError(f"{mpath}: no schema_version; expected {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{mpath}: unknown schema_version {version!r}; this toolkit reads {SCHEMA_VERSION}"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise ArtifactError(f"{mpath}: missing field(s) {', '.join(missing)}")
    return manifest


def load_variant(path: str | Path, verify: bool = True) -> Variant:
    """Load a variant; with `verify`, fail on any missing file or checksum mismatch."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        for rel, info in manifest["files"].items():
            fpath = path / rel
            if not fpath.is_file():
                raise ArtifactError(f"{fpath}: listed in {path / MANIFEST} but missing")
            digest = sha256_file(fpath)
            if digest != info["sha256"]:
                raise ArtifactError(
                    f"{fpath}: checksum mismatch (manifest {info['sha256'][:12]}..., "
                    f"file {digest[:12]}...); the file changed after the variant was written"
                )
    return Variant(path, manifest)


def update_manifest(variant: Variant, *, metrics: dict | None = None,
                    extra: dict | None = None) -> Variant:
    """Merge new metrics/extra into a variant's manifest (atomic replace of manifest.json).

    Model files are not touched, so their checksums stay valid.
    """
    manifest = read_manifest(variant.path)
    if metrics:
        manifest["metrics"].update(metrics)
    if extra:
        manifest["extra"].update(extra)
    _write_json_atomic(variant.path / MANIFEST, manifest)
    return Variant(variant.path, manifest)


def list_variants(root: str | Path = DEFAULT_ROOT, task: str | None = None,
                  verify: bool = False) -> list[Variant]:
    """All variants under `root` (optionally of one task), sorted by task then name."""
    root = Path(root)
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


def select_variant(root: str | Path, task: str, variant: str, reason: dict | None = None) -> Path:
    """Record which variant of a task `serve` should use."""
    find_variant(root, task, variant, verify=False)
    path = Path(root) / task / SELECTED
    _write_json_atomic(path, {"task": task, "variant": variant, "reason": reason or {},
                              "selected_at": _dt.datetime.now(_dt.timezone.utc)
                              .isoformat(timespec="seconds")})
    return path


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


def clean_stale_temporaries(root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """Remove staging directories left behind by a killed process (not by an exception)."""
    removed = []
    root = Path(root)
    if root.is_dir():
        for p in root.glob(f"*/{_TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
