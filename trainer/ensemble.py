"""Ensembles: several trained variants of one task combined into one model.

  average  soft voting: the mean of the members' probabilities;
  vote     hard voting: the share of members voting for each class (the member's top class;
           for a sigmoid member, p > 0.5), with the mean probability as a 0.1% tie-breaker.

The result is one tf_keras model (the members nested inside, built from standard TF ops), so it
is evaluated, exported to ONNX/TFLite and served like any other variant. Members must share
their preprocessing (same pixel scaling, or the same vocabulary), since one input feeds all.
"""
from __future__ import annotations

import json

from core.artifacts import Variant, default_root, find_variant
from trainer.errors import TrainerInputError
from core.tasks import get_task
from core.tf_setup import keras, require_tf_keras_model, tf

METHODS = ("average", "vote")
TIE_BREAK = 1e-3


class EnsembleError(TrainerInputError):
    """Members that cannot be combined; the message says which and why."""


def build_ensemble(members: list, method: str = "average", name: str = "ensemble"):
    """One model whose output combines `members` (tf_keras models with equal inputs/outputs)."""
    if method not in METHODS:
        raise EnsembleError(f"unknown ensemble method {method!r}; valid: {', '.join(METHODS)}")
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(members)}")
    for i, m in enumerate(members):
        require_tf_keras_model(m, f"ensemble member #{i}")
    shapes = {(tuple(m.input_shape[1:]), m.inputs[0].dtype.name, m.output_shape[-1]) for m in members}
    if len(shapes) != 1:
        raise EnsembleError(f"members differ in input shape/dtype or outputs: {sorted(shapes)}")
    x_in = keras.Input(members[0].input_shape[1:], dtype=members[0].inputs[0].dtype, name="input")
    outputs = []
    for i, m in enumerate(members):
        m._name = f"member{i}_{m.name}"  # unique names inside the ensemble graph
        outputs.append(m(x_in))
    mean = keras.layers.Average(name="mean_probability")(outputs)
    if method == "average":
        out = mean
    else:
        classes = members[0].output_shape[-1]
        if classes == 1:
            votes = [tf.cast(o > 0.5, tf.float32) for o in outputs]
        else:
            votes = [tf.one_hot(tf.argmax(o, axis=-1), depth=classes) for o in outputs]
        share = keras.layers.Average(name="vote_share")(votes)
        out = keras.layers.Add(name="votes")([share * (1.0 - TIE_BREAK), mean * TIE_BREAK])
    return keras.Model(x_in, out, name=name)


def _check_same_preprocessing(variants: list[Variant]) -> None:
    configs = {json.dumps(dict(v.manifest.preprocessing), sort_keys=True) for v in variants}
    if len(configs) != 1:
        raise EnsembleError("members use different preprocessing (" + "; ".join(
            f"{v.name}: {dict(v.manifest.preprocessing)}" for v in variants) + "); retrain them "
            "with the same scaling")
    if variants[0].manifest.preprocessing_type == "text":
        vocabularies = {v.file("vocab.json").read_text() for v in variants}
        if len(vocabularies) != 1:
            raise EnsembleError("text members have different vocabularies; train them with the "
                                "same vocab_size and data so their word ids agree")


def ensemble_variants(task: str, member_names: list[str], *, method: str = "average",
                      artifacts=None, variant: str | None = None, data_dir=None) -> Variant:
    """Combine trained variants of `task`, evaluate on its test split and write a variant."""
    from core.evaluate import load_keras, split_inputs
    from trainer.fit import evaluate
    from trainer.train import save_variant

    spec = get_task(task)
    artifacts = artifacts if artifacts is not None else default_root()
    variants = [find_variant(artifacts, task, name) for name in member_names]
    _check_same_preprocessing(variants)
    preprocessor = variants[0].preprocessor()
    test = split_inputs(variants[0], "test", data_dir)
    x_test = test.x
    members = [load_keras(v) for v in variants]
    member_accuracy = {v.name: evaluate(m, x_test, test.y)[0]["test_accuracy"]
                       for v, m in zip(variants, members)}
    model = build_ensemble(members, method, name=f"ensemble_{method}")
    metrics, _ = evaluate(model, x_test, test.y)
    metrics.update({"data_source": test.source, "best_member_accuracy": max(member_accuracy.values()),
                    "gain_over_best_member": metrics["test_accuracy"] - max(member_accuracy.values())})
    name = variant or f"ensemble-{method}-" + "+".join(member_names)
    print(f"[trainer] ensemble {task}/{name}: test accuracy {metrics['test_accuracy']:.4f} "
          f"(members: {', '.join(f'{k} {a:.4f}' for k, a in member_accuracy.items())})")
    return save_variant(
        artifacts, task=spec, model_name="ensemble", variant=name, model=model,
        preprocessor=preprocessor, x_test=x_test, y_test=test.y, metrics=metrics,
        lineage={"parent": member_names[0], "technique": "ensemble",
                 "params": {"method": method, "members": list(member_names)}},
        extra={"member_test_accuracy": member_accuracy})
