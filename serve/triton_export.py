"""Write a Triton model repository (and a KServe InferenceService) from the selected variants.

    model_repository/
      <task>/config.pbtxt      serve's configuration of the model (serve.triton_config)
      <task>/labels.txt        one label per output column (Triton's classification reads it)
      <task>/1/model.onnx      the variant's ONNX model, byte for byte
      kserve-inferenceservice.yaml   a KServe InferenceService running Triton on it (a file:
                                     Triton treats only directories as models)

config.pbtxt is `serve.triton_config.model_config` rendered as protobuf text: the dict that
`GET /v2/models/{m}/config` answers, so Triton runs the model as serve does (row limit,
batching, queue, runtime settings, instance kind). The ONNX file, tensor names and shapes are
the ones serve exposes through /v2, so a client that works against `serve` works against
Triton unchanged. `--instance-kind gpu` exports the selection's GPU placement (the variant
measured fastest on the GPU, when one was) on KIND_GPU instances. TensorFlow-free.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from core.artifacts import (ArtifactError, Variant, find_variant, selected_placements,
                            selected_variant)
from core.userdata import served_tasks
from serve.settings import Settings
from serve.triton_config import INSTANCE_KINDS, LABELS_FILE, model_config, output_labels

KSERVE_FILE = "kserve-inferenceservice.yaml"
# The Triton release (NGC image tag) the KServe runtime runs; pick the one your cluster has.
TRITON_RUNTIME_VERSION = "24.08-py3"
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
    model:
      modelFormat:
        name: triton
      protocolVersion: v2
      runtimeVersion: "{runtime_version}"
      storageUri: {storage_uri}
      resources:
        limits: {{cpu: "2", memory: 2Gi{gpu_limit}}}
"""


@dataclass(frozen=True)
class ExportedModel:
    task: str
    variant: str
    directory: Path


def config_pbtxt(config: dict, variant: str) -> str:
    """A model configuration dict (protobuf JSON form) as config.pbtxt: parsed into Triton's
    ModelConfig message (so a field Triton does not know fails here, not in Triton) and
    printed as protobuf text."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return (f"# Written by `python -m serve export-triton` from variant {variant!r}: serve's "
            f"configuration of the model\n# (GET /v2/models/{config['name']}/config answers "
            f"the same under the same settings and placement).\n"
            f"{text_format.MessageToString(message)}")


def export_variant(artifacts: Path, task: str, instance_kind: str) -> Variant:
    """The variant Triton should run for `task` on `instance_kind`: the selection's GPU
    placement for "gpu" when one was measured, else the selected variant; when that has no
    ONNX model (a LiteRT choice), the best ONNX candidate measured on the CPU."""
    placements = selected_placements(artifacts, task)
    gpu_choice = (placements.get("gpu") or {}).get("variant") if instance_kind == "gpu" else None
    variant = (find_variant(artifacts, task, gpu_choice, verify=True) if gpu_choice
               else selected_variant(artifacts, task, verify=True))
    if not variant.has_file("model.onnx"):
        onnx_choice = (placements.get("cpu-onnx") or {}).get("variant")
        if onnx_choice:
            variant = find_variant(artifacts, task, onnx_choice, verify=True)
    variant.file("model.onnx")  # raises ArtifactError when there is none
    return variant


def export_triton(artifacts: Path, out: Path, settings: Settings | None = None, *,
                  instance_kind: str = "cpu", instance_count: int = 1, tasks=None,
                  storage_uri: str = "gs://YOUR-BUCKET/model_repository",
                  runtime_version: str = TRITON_RUNTIME_VERSION
                  ) -> tuple[list[ExportedModel], dict[str, str]]:
    """Export every task with a selected variant as serve runs it under `settings` (default
    settings when None); returns (exported, {task: why skipped})."""
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"instance kind {instance_kind!r}; valid: {', '.join(INSTANCE_KINDS)}")
    settings = settings or Settings(artifacts=Path(artifacts))
    out = Path(out)
    exported, skipped = [], {}
    for task in served_tasks(artifacts) if tasks is None else tasks:
        try:
            variant = export_variant(artifacts, task, instance_kind)
        except ArtifactError as e:
            skipped[task] = str(e)
            continue
        config = model_config(variant, settings, name=task, instance_kind=instance_kind,
                              instance_count=instance_count)
        model_dir = out / task
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        shutil.copy2(variant.file("model.onnx"), model_dir / "1" / "model.onnx")
        (model_dir / LABELS_FILE).write_text("\n".join(output_labels(variant)) + "\n")
        (model_dir / "config.pbtxt").write_text(config_pbtxt(config, variant.name))
        exported.append(ExportedModel(task, variant.name, model_dir))
    out.mkdir(parents=True, exist_ok=True)
    gpu_limit = ', nvidia.com/gpu: "1"' if instance_kind == "gpu" else ""
    (out / KSERVE_FILE).write_text(KSERVE_TEMPLATE.format(
        storage_uri=storage_uri, runtime_version=runtime_version, gpu_limit=gpu_limit))
    return exported, skipped
