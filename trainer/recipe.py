"""Training recipes: every option the course teaches, as one dataclass of commented defaults.

Resolution order (later wins): these defaults < the model's defaults (its `@register_model`
line) < a recipe JSON file (only the differences) < command-line flags. Unknown keys, wrong
types and unknown choices are errors that list what is valid. The resolved recipe is saved
with the artifact as `recipe.json`. TensorFlow-free, so a bad recipe fails before TF loads.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from trainer.errors import TrainerInputError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine", "plateau")
INITIALIZERS = ("glorot_uniform", "he_normal", "he_uniform", "random_normal")
# Names of the rows of trainer.models.blocks.NORMALIZATIONS / ACTIVATIONS (a test checks both
# agree); "default" keeps each model's own activation (ReLU in the zoo's blocks).
NORMALIZATIONS = ("none", "batch", "group", "layer")
ACTIVATIONS = ("default", "relu", "leaky_relu", "elu", "tanh")
SCALINGS = ("minmax", "standardize")
# Rows of trainer.augment.AUGMENTATIONS (a test checks both agree).
AUGMENTATIONS = ("full", "shift")
STRATEGIES = ("default", "mirrored", "multiworker")
MONITORS = ("val_accuracy", "val_loss")
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "initializer": INITIALIZERS,
           "normalization": NORMALIZATIONS, "activation": ACTIVATIONS,
           "scaling": SCALINGS, "strategy": STRATEGIES, "monitor": MONITORS,
           "augmentation": AUGMENTATIONS}
# Older keys still accepted in recipe files and on the command line (as --flag/--no-flag):
# key -> (bool, help, the recipe values it stands for). Saved recipe.json files and scripts
# use `batch_norm`.
ALIASES = {
    "batch_norm": (bool, "same as --normalization batch (--no-batch-norm: none)",
                   lambda on: {"normalization": "batch" if on else "none"}),
}


class RecipeError(TrainerInputError):
    """A recipe key, type or value that is not valid; the message lists the valid ones."""


@dataclass(frozen=True)
class Recipe:
    # --- optimization
    optimizer: str = "adam"          # one of OPTIMIZERS ("momentum" = SGD with momentum)
    learning_rate: float = 1e-3      # peak learning rate (after warm-up)
    momentum: float = 0.9            # momentum/nesterov SGD, and RMSprop's momentum term
    schedule: str = "constant"       # one of SCHEDULES
    decay_rate: float = 0.5          # step/exponential: factor per decay period; inverse_time: k
    decay_epochs: float = 2.0        # step/exponential/inverse_time: length of one decay period
    staircase: bool = True           # exponential: decay in steps (True) or smoothly
    plateau_patience: int = 2        # plateau: epochs without improvement before lr *= decay_rate
    min_learning_rate: float = 1e-6  # plateau floor; cosine ends at this value
    warmup_epochs: float = 0.0       # linear warm-up from 0 to learning_rate, before any schedule
    # --- regularization and architecture options (models set their own defaults)
    l1: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    normalization: str = "none"      # one of NORMALIZATIONS, after each hidden Dense/Conv
    norm_groups: int = 8             # normalization "group": channel groups (must divide them)
    activation: str = "default"      # one of ACTIVATIONS, of each hidden Dense/Conv block
    initializer: str = "glorot_uniform"  # one of INITIALIZERS
    width: float = 1.0               # multiplies units/filters (alpha of MobileNets)
    resolution: int = 0              # keras.applications input side after resizing (0: model default)
    # --- data
    scaling: str = "minmax"          # feature scaling, one of SCALINGS
    augment: bool = False            # shifts, small rotations, zoom/crop, brightness/contrast
                                     # (+ horizontal flips only where they keep the label)
    augmentation: str = "full"       # with augment: which transforms, one of AUGMENTATIONS
    vocab_size: int = 10_000         # text: tokenizer vocabulary (pad and unknown included)
    max_length: int = 256            # text: tokens kept per review
    ngrams: int = 1                  # text: 2 adds word pairs ("not good") as tokens
    max_train_examples: int = 0      # 0: all; else a stratified subset (quick runs, search)
    validation_split: float = 0.1    # held out from train, seeded
    # --- loop
    batch_size: int = 64
    epochs: int = 10
    early_stopping_patience: int = 0  # 0: off; else stop and restore the best epoch's weights
    monitor: str = "val_accuracy"    # what early stopping / plateau / search watch
    seed: int = 0                    # weights, split, shuffling and augmentation
    deterministic: bool = True       # TF op determinism: same seed -> same weights
    steps_per_epoch: int = 0         # 0: one pass over the data
    strategy: str = "default"        # tf.distribute: default, mirrored (GPUs), multiworker (hosts)
    # --- transfer learning (keras.applications models)
    pretrained: str = ""             # "": from scratch; "imagenet": Keras' cached weights;
                                     # "<task>/<variant>": backbone of a variant in --artifacts
    head_epochs: int = 3             # phase 1: frozen backbone, new head
    fine_tune_layers: int = 30       # phase 2: unfreeze the top N backbone layers (BN stays frozen)
    fine_tune_lr_factor: float = 0.1  # phase 2 learning rate = learning_rate * factor
    compare_scratch: bool = False    # also train the same model from scratch and report the gain

    def __post_init__(self):
        for name, valid in CHOICES.items():
            value = getattr(self, name)
            if value not in valid:
                close = difflib.get_close_matches(str(value), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RecipeError(f"unknown {name} {value!r}{hint}; valid: {', '.join(valid)}")
        for name in ("learning_rate", "batch_size", "epochs", "decay_epochs", "width",
                     "norm_groups"):
            if not getattr(self, name) > 0:
                raise RecipeError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.validation_split < 1.0:
            raise RecipeError(f"validation_split must be in [0, 1), got {self.validation_split!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise RecipeError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.ngrams not in (1, 2, 3):
            raise RecipeError(f"ngrams must be 1, 2 or 3, got {self.ngrams!r}")
        if self.early_stopping_patience and not self.validation_split:
            raise RecipeError("early_stopping_patience needs a validation_split > 0")
        if self.schedule == "plateau" and not self.validation_split:
            raise RecipeError("schedule 'plateau' watches validation metrics: set validation_split > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Recipe":
        return recipe_from_dict({**self.to_dict(), **changes})


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in fields(Recipe)}


def _coerce(name: str, value, expected: type):
    """Accept exactly the expected JSON type (ints where floats are wanted, too)."""
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    raise RecipeError(
        f"recipe value {name}={value!r} has type {type(value).__name__}; expected "
        f"{expected.__name__}" + (f" (one of {', '.join(CHOICES[name])})" if name in CHOICES else "")
    )


def recipe_from_dict(values: dict, base: dict | None = None) -> Recipe:
    """Build a Recipe from `base` (e.g. model defaults) updated by `values`, validating both."""
    types_ = _field_types()
    merged = {}
    for source in (base or {}, values):
        source = expand_aliases(source)
        for key, value in source.items():
            if key not in types_:
                close = difflib.get_close_matches(key, types_, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise RecipeError(f"unknown recipe key {key!r}.{hint} Valid keys: "
                                  f"{', '.join(types_)}")
            merged[key] = _coerce(key, value, types_[key])
    return Recipe(**merged)


def expand_aliases(source: dict) -> dict:
    """`source` with alias keys replaced by the recipe values they stand for; an alias that
    contradicts a value given beside it is an error."""
    out = {k: v for k, v in source.items() if k not in ALIASES}
    for key in ALIASES.keys() & source.keys():
        type_, _, expand = ALIASES[key]
        for name, value in expand(_coerce(key, source[key], type_)).items():
            if name in out and out[name] != value:
                raise RecipeError(f"recipe values {key}={source[key]!r} and {name}={out[name]!r} "
                                  f"contradict each other ({key}: {ALIASES[key][1]}); give one")
            out[name] = value
    return out


def load_recipe_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise RecipeError(f"recipe file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a JSON object of recipe keys")
    return data


def resolve_recipe(model_defaults: dict, file_values: dict | None = None,
                   overrides: dict | None = None) -> Recipe:
    """Recipe defaults < model defaults < recipe file < command-line overrides."""
    return recipe_from_dict({**(file_values or {}), **(overrides or {})}, base=dict(model_defaults))


def recipe_field_help() -> dict[str, tuple[type, object]]:
    """(type, default) of every recipe key, for building command-line flags."""
    types_ = _field_types()
    return {f.name: (types_[f.name], f.default) for f in fields(Recipe)}

