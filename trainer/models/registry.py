"""One registry for every model: a name, one builder, its documented input/output and the
recipe defaults that train it well (timm's `@register_model` pattern).

A builder is `builder(inputs: ModelInputs, options: ModelOptions) -> tf_keras.Model`; the
function name is the model name. Family files (`mlp.py`, `cnn.py`, `text.py`,
`applications.py`) keep each model's defaults beside its builder.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from trainer.errors import TrainerInputError

# Family modules that register models; imported on first use of the registry.
FAMILY_MODULES = ("trainer.models.mlp", "trainer.models.cnn", "trainer.models.text",
                  "trainer.models.applications")
INPUT_KINDS = ("image", "text", "vector")


class UnknownModelError(TrainerInputError):
    """A model name that is not registered; the message lists close matches and all names."""


class ModelOptionsError(TrainerInputError):
    """An option a model cannot build with; the message names the option and the model."""


@dataclass(frozen=True)
class ModelInputs:
    """What the data dictates: input shape (without batch), number of classes, and for text
    models the size of the tokenizer's id space."""

    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int | None = None


@dataclass(frozen=True)
class ModelOptions:
    """What a recipe may change. None means "the model's own default" (see ModelSpec.defaults)."""

    width: float = 1.0            # multiplies units/filters (alpha for keras.applications)
    dropout: float = 0.0
    normalization: str | None = None  # a row of blocks.NORMALIZATIONS; None: the model's own
    norm_groups: int = 8          # normalization "group": channel groups
    activation: str | None = None  # a row of blocks.ACTIVATIONS; None: the model's own
    initializer: str = "glorot_uniform"
    l1: float = 0.0
    l2: float = 0.0
    resolution: int | None = None  # keras.applications backbones: input side after resizing
    weights: str | None = None     # keras.applications backbones: path of a weights file


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable
    kind: str                 # which inputs it takes: "image", "text" or "vector"
    task: str                 # the task it was designed for (the default for `--task`)
    description: str          # input -> layers -> output, one line
    defaults: Mapping = field(default_factory=dict)  # recipe values that train it well

    def build(self, inputs: ModelInputs, options: ModelOptions):
        from core.tf_setup import require_tf_keras_model

        model = self.builder(inputs, options)
        require_tf_keras_model(model, f"builder of {self.name!r}")
        return model


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(*, kind: str, task: str, description: str, **defaults):
    """Decorator: register `builder` under its function name with its recipe defaults."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")

    def decorate(builder: Callable) -> Callable:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, kind, task, description,
                                    MappingProxyType(dict(defaults)))
        return builder

    return decorate


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_models(kind: str | None = None) -> list[str]:
    _load_families()
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_model(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Valid models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(name: str, inputs: ModelInputs, options: ModelOptions | None = None):
    return get_model(name).build(inputs, options or ModelOptions())
