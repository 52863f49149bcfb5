"""Fully connected head -> convolutions (`fc_to_conv1x1`), weights carried over exactly.

A classifier head is a Flatten or a global pooling of a 4-D feature map followed by Dense
layers (with channel-wise layers between them: BatchNormalization, activations, Dropout) up to
the model's output. The rewrite makes every one of those Dense layers a convolution:

- after a global pooling (kept with `keepdims`, so its output is an N x 1 x 1 x C map), each
  Dense (in -> out) is a 1x1 Conv2D with the kernel reshaped to (1, 1, in, out);
- after a Flatten of an H x W x C map, the Flatten goes and the first Dense becomes an H x W
  'valid' Conv2D with the kernel reshaped to (H, W, C, out) (Flatten is row-major over
  height, width, channel, the kernel's order); the Dense layers after it are 1x1 convs.

A Flatten after the last layer gives the model its (N, classes) output back, so it is a
drop-in variant: the same input, the same outputs up to float rounding (tested), the same
MACs. Everything before the head is left as it is.
"""
from __future__ import annotations

import copy

from compress import graph
from compress.factorize import summarize_kept
from compress.errors import NotApplicableError

# Where a head starts: class -> how its output becomes a 4-D map again.
HEAD_STARTS = {"Flatten": "flatten", "GlobalAveragePooling2D": "pool",
               "GlobalMaxPooling2D": "pool"}
# Channel-wise layers a head may hold between its Dense layers; the normalizations work on
# the last axis of the 4-D map once their `axis` says so.
CHANNEL_WISE = {"Dropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
                "BatchNormalization", "LayerNormalization"}
LAST_AXIS = {"BatchNormalization", "LayerNormalization"}


def _head_chain(layer, consumers: dict, outputs: set, by_name: dict) -> tuple[list[str], str | None]:
    """The layer names after a head start up to the model output, or why it is no head."""
    chain, name = [], layer.name
    while name not in outputs:
        users = consumers[name]
        if len(users) != 1:
            return chain, f"{name} feeds {len(users)} layers (a head is one chain to the output)"
        name = users[0]
        cls = type(by_name[name]).__name__
        if cls != "Dense" and cls not in CHANNEL_WISE:
            return chain, f"{name} ({cls}) is neither Dense nor a channel-wise layer"
        if cls == "Dense" and len(by_name[name].input_shape) != 2:
            return chain, f"{name} is a Dense on a {len(by_name[name].input_shape)}-D input"
        chain.append(name)
    if not any(type(by_name[n]).__name__ == "Dense" for n in chain):
        return chain, "no Dense layer after it"
    return chain, None


def plan_fc_to_conv(model, skip_layers=()) -> dict:
    """Which heads become convolutional: {"heads": {start: {...}}, "layers": {dense: {...}},
    "kept": {layer: why not}}."""
    config = graph.functional_config(model)
    consumers, outputs = graph.consumers_map(config), graph.output_names(config)
    by_name = {layer.name: layer for layer in model.layers}
    plan = {"heads": {}, "layers": {}, "kept": {}}
    for start in graph.candidate_layers(model, HEAD_STARTS, skip_layers, plan["kept"]):
        shape = start.input_shape
        if not isinstance(shape, tuple) or len(shape) != 4:
            plan["kept"][start.name] = f"input is not a 4-D feature map ({shape})"
            continue
        chain, reason = _head_chain(start, consumers, outputs, by_name)
        skipped = [n for n in chain if graph.matches(by_name[n], skip_layers)]
        if reason or skipped:
            plan["kept"][start.name] = reason or f"{', '.join(skipped)} in skip_layers"
            continue
        _, h, w, c = shape
        kind = HEAD_STARTS[type(start).__name__]
        plan["heads"][start.name] = {"kind": kind, "map": [h, w, c], "chain": chain}
        first = True
        for name in chain:
            layer = by_name[name]
            if type(layer).__name__ != "Dense":
                continue
            kernel = [h, w] if first and kind == "flatten" else [1, 1]
            plan["layers"][name] = {"replacement": f"{name}_conv", "kernel_size": kernel,
                                    "units": int(layer.units)}
            first = False
    if not plan["heads"]:
        raise NotApplicableError(
            f"model {model.name!r} has no Flatten/global-pooling head of Dense layers "
            f"({summarize_kept(plan['kept']) if plan['kept'] else 'no Flatten or global pooling'})")
    return plan


def _conv_of(dense, step: dict):
    from core.tf_setup import keras

    c = dense.get_config()
    weights = dense.get_weights()
    kh, kw = step["kernel_size"]
    conv = keras.layers.Conv2D(c["units"], (kh, kw), padding="valid",
                               activation=c["activation"], use_bias=c["use_bias"],
                               name=step["replacement"])
    kernel = weights[0].reshape(kh, kw, -1, c["units"])
    return conv, [kernel] + weights[1:]


def apply_fc_to_conv(model, plan: dict):
    from core.tf_setup import keras

    config = graph.functional_config(model)
    entries = graph.layer_entries(config)
    layers = {layer.name: layer for layer in model.layers}
    new_weights = {}
    for start, head in plan["heads"].items():
        if head["kind"] == "flatten":
            graph.bypass(config, start)
        else:
            entries[start]["config"]["keepdims"] = True
        for name in head["chain"]:
            if name in plan["layers"]:
                conv, weights = _conv_of(layers[name], plan["layers"][name])
                graph.replace_with_chain(config, name, [conv])
                new_weights[conv.name] = weights
            elif type(layers[name]).__name__ in LAST_AXIS:
                entries[name]["config"]["axis"] = -1
        last = head["chain"][-1]
        last = plan["layers"][last]["replacement"] if last in plan["layers"] else last
        graph.insert_after(config, last, keras.layers.Flatten(name=f"{start}_to_output"))
    return graph.Rebuild(copy.deepcopy(config), new_weights).build(model)
