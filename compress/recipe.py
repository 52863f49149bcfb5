"""A compression recipe: which techniques to apply, in which order, with which settings.

JSON file, e.g.

    {"epochs": 1,
     "steps": [
       {"id": "pruned", "technique": "prune", "params": {"sparsity": 0.8}},
       {"technique": "onnx_static", "from": "pruned"}
     ]}

Top-level keys are the fields of Recipe (unknown keys are errors). A step applies to the
trained model unless `from` names the `id` of an earlier step; `id` defaults to the
technique's variant suffix. Everything is validated before any work starts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from compress.errors import CompressError, InvalidParameterError
from compress.techniques import get_technique

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = RECIPES_DIR / "default.json"
# The post-training techniques only (no fine-tuning step).
POSTTRAINING_RECIPE = RECIPES_DIR / "posttraining.json"
# The techniques that need nothing but model.onnx (an imported ONNX model has no Keras model).
ONNX_RECIPE = RECIPES_DIR / "onnx.json"


# On full data (--data-dir or DATA_DIR) a model named here gets its own recipe instead: the
# default steps fine-tuned on every training example, and for fashion_cnn the course's
# techniques (the full-data record's rows for them).
FULL_DATA_RECIPES = {"fashion_cnn": RECIPES_DIR / "full-data-fashion_cnn.json"}


def default_recipe_for(model: str, has_keras: bool = True, full_data: bool = False) -> Path:
    """The recipe `compress run`/`run-all` (`make compress`) applies to a model when none is
    given: the default one, except for models built on a pretrained keras.applications
    backbone, which get the post-training techniques only, and for models without a Keras
    model (imported from ONNX), which get the ONNX ones. The applications' fine-tuning steps
    rebuild, retrace and re-export a graph of 150+ layers, over a minute each on 2 cores, and
    on the bundled samples they start from a backbone near chance level; the full-data recipes
    (`recipes/full*.json`, `--recipe`) run every technique on them."""
    from trainer.models.applications import FAMILIES

    if not has_keras:
        return ONNX_RECIPE
    if full_data and model in FULL_DATA_RECIPES:
        return FULL_DATA_RECIPES[model]
    return POSTTRAINING_RECIPE if model in FAMILIES else DEFAULT_RECIPE


@dataclass(frozen=True)
class Step:
    technique: str
    params: dict
    id: str
    source: str | None = None  # id of an earlier step; None: the trained model


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...] = ()
    # Selection: the fastest ONNX variant at most this many accuracy points below the best
    # trained model of the task.
    accuracy_budget_points: float = 1.0
    # Fine-tuning epochs of the steps that do not set their own.
    epochs: int = 1
    # Fine-tune on at most this many training examples (null: all of them).
    train_limit: int | None = None
    # Training examples used to calibrate static int8 quantization.
    calibration_size: int = 256
    # Test examples every export is parity-checked on.
    parity_size: int = 1000
    # Evaluate accuracy on at most this many test examples (null: the full test split).
    test_limit: int | None = None
    # Also write saved_model/ (TF SavedModel, parity-checked) for float Keras variants.
    export_saved_model: bool = False
    source_file: str | None = field(default=None, compare=False)


_STEP_KEYS = {"technique", "params", "id", "from"}


def parse_recipe(data: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{source}: a recipe is a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(Recipe)} - {"source_file"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidParameterError(f"{source}: unknown key(s) {unknown}; valid: {', '.join(sorted(known))}")
    steps, ids = [], set()
    for i, raw in enumerate(data.get("steps", [])):
        where = f"{source}: step {i + 1}"
        if not isinstance(raw, dict) or "technique" not in raw:
            raise InvalidParameterError(f"{where}: expected an object with a 'technique' key")
        bad = sorted(set(raw) - _STEP_KEYS)
        if bad:
            raise InvalidParameterError(f"{where}: unknown key(s) {bad}; valid: {', '.join(sorted(_STEP_KEYS))}")
        technique = get_technique(raw["technique"])
        try:
            params = technique.resolve(raw.get("params"))
        except CompressError as e:
            raise type(e)(f"{where}: {e}") from None
        step_id = raw.get("id") or technique.suffix(params)
        source_id = raw.get("from")
        if source_id is not None and source_id not in ids:
            raise InvalidParameterError(
                f"{where}: 'from': {source_id!r} is not the id of an earlier step; earlier ids: "
                f"{', '.join(sorted(ids)) or 'none'}")
        if step_id in ids:
            raise InvalidParameterError(f"{where}: duplicate step id {step_id!r}; give it an 'id'")
        ids.add(step_id)
        steps.append(Step(technique.name, params, step_id, source_id))
    settings = {k: v for k, v in data.items() if k != "steps"}
    for key in ("epochs", "calibration_size", "parity_size"):
        if key in settings and not (isinstance(settings[key], int) and settings[key] >= (0 if key == "epochs" else 1)):
            raise InvalidParameterError(f"{source}: {key} must be an integer >= "
                                        f"{0 if key == 'epochs' else 1}, got {settings[key]!r}")
    if not isinstance(settings.get("export_saved_model", False), bool):
        raise InvalidParameterError(f"{source}: export_saved_model must be true or false")
    budget = settings.get("accuracy_budget_points", 1.0)
    if not isinstance(budget, (int, float)) or budget < 0:
        raise InvalidParameterError(f"{source}: accuracy_budget_points must be >= 0, got {budget!r}")
    return Recipe(steps=tuple(steps), source_file=source, **settings)


def load_recipe(path: str | Path | None = None) -> Recipe:
    path = Path(path) if path else DEFAULT_RECIPE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidParameterError(
            f"recipe {path} not found; bundled recipes: "
            f"{', '.join(p.name for p in sorted(RECIPES_DIR.glob('*.json')))}") from None
    except json.JSONDecodeError as e:
        raise InvalidParameterError(f"recipe {path} is not valid JSON: {e}") from None
    return parse_recipe(data, str(path))
