"""Editing a tf_keras model as data: its Functional config plus its weights.

Structural transforms (channel pruning, separable and low-rank replacement) never mutate the
caller's model. They take a copy of the config (a Sequential model is first expressed as the
equivalent Functional graph, so there is one code path), edit layer entries, rebuild a fresh
model with `keras.Model.from_config` and copy weights layer by layer, replacing the weights of
the layers they changed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from compress.errors import UnsupportedLayerError


def functional_config(model) -> dict:
    """A deep copy of the model's config as a Functional graph."""
    from core.tf_setup import keras, require_tf_keras_model

    require_tf_keras_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        # Layers are rebuilt from the tensors they are called on; a stale build shape (the
        # input width of a layer whose producer got narrower) would make them fail.
        entry.pop("build_config", None)
    return config


def layer_entries(config: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in config["layers"]}


def inbound_names(entry: dict) -> list[str]:
    """Names of the layers feeding `entry` (first call site)."""
    nodes = entry.get("inbound_nodes") or []
    if not nodes:
        return []
    return [ref[0] for ref in nodes[0]]


def is_shared(entry: dict) -> bool:
    return len(entry.get("inbound_nodes") or []) > 1


def consumers_map(config: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {e["name"]: [] for e in config["layers"]}
    for entry in config["layers"]:
        for node in entry.get("inbound_nodes") or []:
            for ref in node:
                if entry["name"] not in out[ref[0]]:
                    out[ref[0]].append(entry["name"])
    return out


def output_names(config: dict) -> set[str]:
    return {ref[0] for ref in config["output_layers"]}


def new_layer_entry(layer, inbound: list[str]) -> dict:
    """A config entry for a freshly constructed (unbuilt) layer called on `inbound` layers."""
    return {"module": "keras.layers", "class_name": type(layer).__name__,
            "config": layer.get_config(), "registered_name": None, "name": layer.name,
            "inbound_nodes": [[[name, 0, 0, {}] for name in inbound]]}


def replace_with_chain(config: dict, name: str, chain: list) -> None:
    """Replace layer `name` by `chain` (new layer objects called one after another), in place
    on `config`: the first gets the old layer's inputs, every user of the old layer (and the
    model outputs) now reads the last one."""
    entries = layer_entries(config)
    old = entries[name]
    new_entries = []
    for i, layer in enumerate(chain):
        entry = new_layer_entry(layer, [] if i == 0 else [chain[i - 1].name])
        if i == 0:
            entry["inbound_nodes"] = copy.deepcopy(old["inbound_nodes"])
        new_entries.append(entry)
    _rewire(config, name, chain[-1].name)
    position = config["layers"].index(old)
    config["layers"][position:position + 1] = new_entries


def _rewire(config: dict, old: str, new: str) -> None:
    """Every reference to layer `old`'s output (inbound nodes, model outputs) now reads `new`."""
    for entry in config["layers"]:
        if entry["name"] == new:
            continue
        for node in entry.get("inbound_nodes") or []:
            for ref in node:
                if ref[0] == old:
                    ref[0] = new
    for ref in config["output_layers"]:
        if ref[0] == old:
            ref[0] = new


def bypass(config: dict, name: str) -> None:
    """Remove single-input layer `name`, in place: its users read its input instead."""
    entry = layer_entries(config)[name]
    inbound = inbound_names(entry)
    if len(inbound) != 1 or is_shared(entry):
        raise UnsupportedLayerError(f"layer {name!r} has {len(inbound)} inputs / "
                                    f"{len(entry.get('inbound_nodes') or [])} call sites; only a "
                                    f"single-input, single-use layer can be bypassed")
    _rewire(config, name, inbound[0])
    config["layers"].remove(entry)


def insert_after(config: dict, name: str, layer) -> None:
    """Call the new `layer` on layer `name`'s output, in place: `name`'s users (and the model
    outputs) read the new layer instead."""
    entry = new_layer_entry(layer, [name])
    _rewire(config, name, layer.name)
    entries = config["layers"]
    entries.insert(entries.index(layer_entries(config)[name]) + 1, entry)


@dataclass
class Rebuild:
    """A config to build plus the weights of the layers whose weights changed (by name);
    every other layer keeps the weights of the layer with the same name in the source."""

    config: dict
    new_weights: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def build(self, source):
        from core.tf_setup import keras

        model = keras.Model.from_config(self.config)
        old = {layer.name: layer for layer in source.layers}
        for layer in model.layers:
            if layer.name in self.new_weights:
                layer.set_weights(self.new_weights[layer.name])
            elif layer.name in old and layer.weights:
                layer.set_weights(old[layer.name].get_weights())
        return model


def replace_layers(model, plan: dict, replacement) -> object:
    """A new model with every layer of `plan["layers"]` replaced by a chain of new layers:
    `replacement(layer, step)` -> (chain, {new layer name: weights})."""
    config = functional_config(model)
    layers = {layer.name: layer for layer in model.layers}
    new_weights = {}
    for name, step in plan["layers"].items():
        chain, weights = replacement(layers[name], step)
        replace_with_chain(config, name, chain)
        new_weights.update(weights)
    return Rebuild(config, new_weights).build(model)


def candidate_layers(model, classes, skip_layers, kept: dict):
    """The model's layers whose class is in `classes`, in order; those `skip_layers` selects
    are recorded in `kept` (layer name -> reason) instead."""
    for layer in model.layers:
        if type(layer).__name__ not in classes:
            continue
        if matches(layer, skip_layers):
            kept[layer.name] = "in skip_layers"
            continue
        yield layer


def matches(layer, selectors) -> bool:
    """True when a layer is named by `selectors` (layer names or layer class names)."""
    return layer.name in selectors or type(layer).__name__ in selectors


def check_selectors(model, selectors, what: str) -> None:
    """Every entry of skip_layers/layers must be a layer name of the model or a Keras layer
    class name (a class absent from this model is fine: recipes are shared across models)."""
    from core.tf_setup import keras

    names = {layer.name for layer in model.layers}
    classes = {type(layer).__name__ for layer in model.layers}
    unknown = [s for s in selectors
               if s not in names and s not in classes and not hasattr(keras.layers, str(s))]
    if unknown:
        raise UnsupportedLayerError(
            f"{what} {unknown} match no layer of model {model.name!r}; give layer names "
            f"({', '.join(sorted(names))}) or layer classes ({', '.join(sorted(classes))})"
        )
