"""Structured (channel) pruning: remove whole filters/units and rebuild a physically smaller
model. Unlike magnitude pruning this shrinks dense kernels, so it lowers latency.

Importance of an output channel is the L1 norm of its kernel slice (Li et al., "Pruning
Filters for Efficient ConvNets", 2017). Removing output channel c of a producer (Conv1D, Conv2D,
SeparableConv2D, Dense) also removes channel c from every layer the tensor flows through
unchanged per channel (BatchNormalization, DepthwiseConv2D, activations, pooling, padding,
dropout) and input row c of the layers that consume it (Conv2D/SeparableConv2D/Dense, also
through a Flatten). A producer whose output reaches anything else (Add, Concatenate, a model
output, an unknown layer) keeps all its channels; the plan records why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from compress import graph
from compress.errors import NotApplicableError


def _bias(weights, idx):
    return [weights[1][idx]] if len(weights) > 1 else []


@dataclass(frozen=True)
class ChannelRule:
    """How one producer/consumer class is narrowed. Weights are `layer.get_weights()`."""

    width_key: str
    importance: Callable  # weights -> (C_out,) L1 norms
    slice_out: Callable   # (weights, kept output idx) -> weights
    slice_in: Callable    # (weights, kept input idx) -> weights


def _l1_last_axis(kernel):
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


PRODUCERS: dict[str, ChannelRule] = {
    "Dense": ChannelRule(
        "units", lambda w: _l1_last_axis(w[0]),
        lambda w, i: [w[0][:, i]] + _bias(w, i),
        lambda w, i: [w[0][i, :]] + w[1:]),
    "Conv2D": ChannelRule(
        "filters", lambda w: _l1_last_axis(w[0]),
        lambda w, i: [w[0][..., i]] + _bias(w, i),
        lambda w, i: [w[0][:, :, i, :]] + w[1:]),
    "Conv1D": ChannelRule(
        "filters", lambda w: _l1_last_axis(w[0]),
        lambda w, i: [w[0][..., i]] + _bias(w, i),
        lambda w, i: [w[0][:, i, :]] + w[1:]),
    "SeparableConv2D": ChannelRule(
        "filters", lambda w: _l1_last_axis(w[1]),
        lambda w, i: [w[0], w[1][..., i]] + ([w[2][i]] if len(w) > 2 else []),
        lambda w, i: [w[0][:, :, i, :], w[1][:, :, i, :]] + w[2:]),
}
# Layers that carry a channel through with per-channel weights: slice every weight on its
# channel axis. Layers in PASS_THROUGH have no weights and work on any channel count.
CHANNELWISE: dict[str, Callable] = {
    "BatchNormalization": lambda w, i: [v[i] for v in w],
    "DepthwiseConv2D": lambda w, i: [w[0][:, :, i, :]] + [v[i] for v in w[1:]],
}
PASS_THROUGH = frozenset({
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D",
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "MaxPooling1D", "AveragePooling1D",
})


@dataclass
class ChannelGroup:
    producer: str
    members: list[str]
    consumers: list[tuple[str, int]]  # (layer, spatial positions per channel: 1 unless Flatten)
    blocked: str | None = None


def _layer_ok(layer) -> str | None:
    """Why a layer cannot take part in channel pruning, or None."""
    cls = type(layer).__name__
    if cls in ("Conv1D", "Conv2D", "SeparableConv2D") and getattr(layer, "groups", 1) != 1:
        return f"{layer.name!r} is a grouped convolution"
    if cls in ("DepthwiseConv2D", "SeparableConv2D") and layer.depth_multiplier != 1:
        return f"{layer.name!r} has depth_multiplier {layer.depth_multiplier}"
    if cls == "BatchNormalization":
        axis = list(np.atleast_1d(layer.axis))
        if axis not in ([len(layer.input_shape) - 1], [-1]):
            return f"{layer.name!r} normalizes axis {layer.axis}, not the channel axis"
    if cls in ("Conv1D", "Conv2D", "SeparableConv2D", "DepthwiseConv2D") and \
            layer.data_format != "channels_last":
        return f"{layer.name!r} is channels_first"
    return None


def find_group(model, config, producer: str) -> ChannelGroup:
    """Follow the producer's output to the layers that consume its channels."""
    layers = {layer.name: layer for layer in model.layers}
    entries = graph.layer_entries(config)
    users = graph.consumers_map(config)
    outputs = graph.output_names(config)
    group = ChannelGroup(producer, [], [])
    frontier = [(producer, 1)]
    while frontier and group.blocked is None:
        name, spatial = frontier.pop()
        if name in outputs:
            group.blocked = f"{name!r} is a model output"
            break
        for user in users[name]:
            layer, cls = layers[user], entries[user]["class_name"]
            reason = _layer_ok(layer)
            if graph.is_shared(entries[user]) or len(graph.inbound_names(entries[user])) > 1:
                reason = f"{user!r} ({cls}) combines several tensors or is shared"
            if reason is None and cls in PRODUCERS:
                group.consumers.append((user, spatial))
                continue
            # After a Flatten only weightless layers keep the (position, channel) layout.
            if reason is None and (cls in PASS_THROUGH or (cls in CHANNELWISE and spatial == 1)):
                group.members.append(user)
                frontier.append((user, spatial))
                continue
            if reason is None and cls == "Flatten" and spatial == 1:
                group.members.append(user)
                frontier.append((user, int(np.prod(layer.input_shape[1:-1]))))
                continue
            group.blocked = reason or (
                f"its output reaches {user!r} ({cls}), which channel pruning does not handle"
                + (" after a Flatten" if spatial > 1 else ""))
            break
    return group


def kept_channels(importance: np.ndarray, ratio: float, round_to: int) -> np.ndarray:
    """Indices (sorted) of the most important channels after removing `ratio` of them.

    The kept count is rounded up to a multiple of `round_to` (CPU kernels work in blocks of
    8/16 channels, so 37 channels run no faster than 40)."""
    total = len(importance)
    keep = max(1, total - int(round(total * ratio)))
    if round_to > 1 and total >= 2 * round_to:
        keep = min(total, math.ceil(keep / round_to) * round_to)
    return np.sort(np.argsort(-importance, kind="stable")[:keep])


def plan_channel_pruning(model, ratio: float, skip_layers=(), round_to: int = 8) -> dict:
    """Which producers lose which channels: a serializable plan (stored in the lineage)."""
    config = graph.functional_config(model)
    plan = {"ratio": ratio, "round_to": round_to, "layers": {}, "kept_whole": {}}
    for layer in graph.candidate_layers(model, PRODUCERS, skip_layers, plan["kept_whole"]):
        cls = type(layer).__name__
        reason = _layer_ok(layer)
        group = find_group(model, config, layer.name) if reason is None else None
        reason = reason or group.blocked
        if reason is None and not group.consumers:
            reason = "its output is not consumed by a Conv2D/Dense"
        if reason:
            plan["kept_whole"][layer.name] = reason
            continue
        importance = PRODUCERS[cls].importance(layer.get_weights())
        keep = kept_channels(importance, ratio, round_to)
        if len(keep) == len(importance):
            plan["kept_whole"][layer.name] = f"too few channels ({len(importance)}) to remove {ratio:.0%}"
            continue
        plan["layers"][layer.name] = {
            "before": int(len(importance)), "after": int(len(keep)), "keep": keep.tolist(),
            "members": group.members, "consumers": [c for c, _ in group.consumers],
            "spatial": {c: s for c, s in group.consumers},
        }
    if not plan["layers"]:
        raise NotApplicableError(
            f"channel pruning finds no layer to narrow in {model.name!r}: "
            + "; ".join(f"{k}: {v}" for k, v in plan["kept_whole"].items()))
    return plan


def apply_channel_pruning(model, plan: dict):
    """A new, physically smaller model following `plan` (the source model is not changed)."""
    config = graph.functional_config(model)
    entries = graph.layer_entries(config)
    layers = {layer.name: layer for layer in model.layers}
    weights = {name: layer.get_weights() for name, layer in layers.items()}
    touched: set[str] = set()
    for producer, step in plan["layers"].items():
        keep = np.asarray(step["keep"])
        cls = type(layers[producer]).__name__
        rule = PRODUCERS[cls]
        entries[producer]["config"][rule.width_key] = len(keep)
        weights[producer] = rule.slice_out(weights[producer], keep)
        touched.add(producer)
        for member in step["members"]:
            member_cls = type(layers[member]).__name__
            if member_cls in CHANNELWISE:
                weights[member] = CHANNELWISE[member_cls](weights[member], keep)
                touched.add(member)
        for consumer in step["consumers"]:
            spatial = int(step["spatial"][consumer])
            # Flatten lays out NHWC as (position, channel): row = position * C + channel.
            rows = (np.arange(spatial)[:, None] * step["before"] + keep[None, :]).ravel()
            rule_in = PRODUCERS[type(layers[consumer]).__name__]
            weights[consumer] = rule_in.slice_in(weights[consumer], rows)
            touched.add(consumer)
    return graph.Rebuild(config, {n: weights[n] for n in touched}).build(model)
