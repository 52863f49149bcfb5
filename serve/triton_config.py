"""A served model's Triton model configuration, computed once from its variant and the settings.

`model_config(...)` returns Triton's `ModelConfig` as a dict in the protobuf's JSON form (what
`GET /v2/models/{m}/config` and Triton's own HTTP endpoint answer; `google.protobuf.json_format
.ParseDict` reads it into `tritonclient.grpc.model_config_pb2.ModelConfig`). Everything that
describes a model to Triton comes from here: the `/config` endpoint, the gRPC `ModelConfig`
call and the `config.pbtxt` of `python -m serve export-triton` (`serve.triton_export`), so a
Triton started on the exported repository is configured as serve runs the model:

- `max_batch_size` is serve's per-request row limit (`Settings.max_request_rows`): a request
  serve accepts, Triton accepts; dims leave out that batch axis;
- `dynamic_batching` mirrors serve's batcher: preferred batch `max_batch_size` (the rows serve
  merges into one run), `max_queue_delay_microseconds`, and `max_queue_size` as the default
  queue policy; no `dynamic_batching` when serve's batcher is off (`max_batch_size` 1);
- `instance_group` says where the model runs (`KIND_CPU` / `KIND_GPU`, count);
- `parameters` carry the variant's ONNX Runtime settings (its manifest's `runtime.onnxruntime`)
  under ONNX Runtime's own session option key, and serve's `--threads` as the onnxruntime
  backend's `intra_op_thread_count` when it was set explicitly;
- the output names `labels.txt`, one label per output column (`output_labels`), for Triton's
  classification extension.

No TensorFlow, no protobuf: a plain dict.
"""
from __future__ import annotations

from core.artifacts import Variant
from serve.model import V2_DATATYPES
from serve.settings import Settings

LABELS_FILE = "labels.txt"
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}  # serve's placement -> Triton's kind
# Triton platform -> the backend that runs it (Triton fills in either from the other).
TRITON_BACKENDS = {"onnxruntime_onnx": "onnxruntime"}
# Manifest runtime setting -> (ONNX Runtime session config key, how its value is written).
# Triton's onnxruntime backend passes only the session keys it knows to ONNX Runtime
# (`session.use_device_allocator_for_initializers` today); the setting is carried under ORT's
# own key so that the configuration states what the variant was measured with, and a backend
# that forwards session keys applies it.
ONNXRUNTIME_PARAMETERS = {
    "disabled_optimizers": ("optimization.disable_specified_optimizers", ";".join),
}


def output_labels(variant: Variant) -> list[str]:
    """One label per column of the model's output tensor, in column order: the class labels
    of a softmax output; the positive class alone for a one-column sigmoid output, whose one
    value is p(positive) (`core.manifest.probabilities`: column 0 of [1 - p, p] is the other
    label). Triton's classification names column i with line i of labels.txt."""
    labels = list(variant.labels)
    if variant.output.width == 1 and len(labels) == 2:
        return labels[1:]
    return labels


def model_config(variant: Variant, settings: Settings, *, name: str,
                 platform: str = "onnxruntime_onnx", instance_kind: str = "cpu",
                 instance_count: int = 1) -> dict:
    """Triton's ModelConfig (protobuf JSON form) for `variant` served as `name` under
    `settings`, on `instance_count` instances of `instance_kind` ("cpu" or "gpu")."""
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"instance kind {instance_kind!r}; valid: {', '.join(INSTANCE_KINDS)}")
    if instance_count < 1:
        raise ValueError(f"instance count must be >= 1, got {instance_count}")
    spec, output = variant.input, variant.output
    config = {
        "name": name,
        "platform": platform,
        **({"backend": TRITON_BACKENDS[platform]} if platform in TRITON_BACKENDS else {}),
        "max_batch_size": settings.max_request_rows,
        "input": [{"name": spec.name,
                   "data_type": "TYPE_" + V2_DATATYPES[spec.numpy_dtype],
                   "dims": [int(d) for d in spec.example_shape]}],
        "output": [{"name": output.name, "data_type": "TYPE_FP32", "dims": [output.width],
                    "label_filename": LABELS_FILE}],
        "instance_group": [{"count": instance_count, "kind": INSTANCE_KINDS[instance_kind]}],
    }
    if settings.batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": [min(settings.max_batch_size, settings.max_request_rows)],
            "max_queue_delay_microseconds": settings.max_queue_delay_us,
            "default_queue_policy": {"max_queue_size": settings.max_queue_size}}
    parameters = runtime_parameters(variant.onnxruntime_options)
    if settings.threads:
        parameters["intra_op_thread_count"] = {"string_value": str(settings.threads)}
    if parameters:
        config["parameters"] = parameters
    return config


def runtime_parameters(options: dict) -> dict:
    """A manifest's ONNX Runtime settings as Triton model parameters; a setting without a row
    in ONNXRUNTIME_PARAMETERS is an error, as it is for the sessions serve opens
    (`core.runtime.variant_session`)."""
    unknown = sorted(set(options) - set(ONNXRUNTIME_PARAMETERS))
    if unknown:
        raise ValueError(f"onnxruntime setting(s) {unknown} have no Triton parameter; known: "
                         f"{', '.join(ONNXRUNTIME_PARAMETERS)}")
    out = {}
    for key, value in options.items():
        param, render = ONNXRUNTIME_PARAMETERS[key]
        out[param] = {"string_value": render(value) if isinstance(value, (list, tuple))
                      else str(value)}
    return out


def served_model_config(model, settings: Settings) -> dict:
    """The configuration of a ready `serve.model.ServedModel` as it runs here: its variant,
    its runtime's platform, one instance where it really runs (CPU or GPU)."""
    return model_config(model.variant, settings, name=model.name, platform=model.platform,
                        instance_kind=model.placement)
