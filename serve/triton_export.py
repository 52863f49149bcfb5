"""Write a Triton model repository (and a KServe InferenceService) from the selected variants.

    model_repository/
      <task>/config.pbtxt      platform onnxruntime_onnx, manifest shapes, dynamic batching
      <task>/labels.txt        label names (Triton's classification extension reads them)
      <task>/1/model.onnx      the selected variant's ONNX model, byte for byte
      kserve-inferenceservice.yaml   a KServe InferenceService running Triton on it (a file:
                                     Triton treats only directories as models)

The ONNX file, tensor names and shapes are the ones this server exposes through /v2, so a
client that works against `serve` works against Triton unchanged. TensorFlow-free.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from serve.model import V2_DATATYPES
from core.artifacts import ArtifactError, find_variant, selected_placements, selected_variant
from core.manifest import Manifest
from core.userdata import served_tasks

KSERVE_FILE = "kserve-inferenceservice.yaml"
KSERVE_TEMPLATE = """\
# KServe InferenceService serving the Triton model repository this file lies in.
# Copy the repository to object storage, set storageUri, then:
#   kubectl apply -f kserve-inferenceservice.yaml
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: tinyship
spec:
  predictor:
    triton:
      storageUri: {storage_uri}
      resources:
        limits: {{cpu: "2", memory: 2Gi}}
"""


@dataclass(frozen=True)
class ExportedModel:
    task: str
    variant: str
    directory: Path


def triton_config(task: str, manifest: Manifest, max_batch_size: int,
                  max_queue_delay_us: int, instance_kind: str = "KIND_CPU") -> str:
    """config.pbtxt text for one variant; dims leave out the batch dimension."""
    dtype = "TYPE_" + V2_DATATYPES[manifest.input.numpy_dtype]
    in_dims = [int(d) for d in manifest.input.example_shape]
    width = manifest.output.width
    output_name = manifest.output.name
    preferred = sorted({b for b in (max_batch_size // 4, max_batch_size // 2, max_batch_size)
                        if b >= 1})
    # Triton's onnxruntime backend sets graph optimization levels, not single transformers.
    runtime = manifest.onnxruntime_options
    unsupported = "".join(
        f"# Measured with ONNX Runtime {key}={value}, which Triton's onnxruntime backend cannot "
        "set:\n# the answers are the same there, the speed may not be.\n"
        for key, value in runtime.items())
    return f"""\
# Written by `python -m serve export-triton` from variant {manifest.variant!r}.
{unsupported}name: "{task}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{manifest.input.name}"
    data_type: {dtype}
    dims: {in_dims}
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: TYPE_FP32
    dims: [ {width} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: {preferred}
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [ {{ count: 1, kind: {instance_kind} }} ]
"""


def export_triton(artifacts: Path, out: Path, *, max_batch_size: int = 32,
                  max_queue_delay_us: int = 500, tasks=None,
                  storage_uri: str = "gs://YOUR-BUCKET/model_repository"
                  ) -> tuple[list[ExportedModel], dict[str, str]]:
    """Export every task with a selected variant; returns (exported, {task: why skipped})."""
    out = Path(out)
    exported, skipped = [], {}
    for task in served_tasks(artifacts) if tasks is None else tasks:
        try:
            variant = selected_variant(artifacts, task, verify=True)
            if not variant.has_file("model.onnx"):
                # A TFLite-only choice (LiteRT): Triton runs the best ONNX candidate instead.
                onnx_choice = selected_placements(artifacts, task).get("cpu-onnx") or {}
                if onnx_choice.get("variant"):
                    variant = find_variant(artifacts, task, onnx_choice["variant"], verify=True)
            onnx_path = variant.file("model.onnx")
        except ArtifactError as e:
            skipped[task] = str(e)
            continue
        model_dir = out / task
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        shutil.copy2(onnx_path, model_dir / "1" / "model.onnx")
        (model_dir / "labels.txt").write_text("\n".join(variant.labels) + "\n")
        (model_dir / "config.pbtxt").write_text(triton_config(
            task, variant.manifest, max_batch_size, max_queue_delay_us))
        exported.append(ExportedModel(task, variant.name, model_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / KSERVE_FILE).write_text(KSERVE_TEMPLATE.format(storage_uri=storage_uri))
    return exported, skipped
