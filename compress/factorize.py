"""Replacing layers by cheaper factorized ones, initialized from the original weights.

- Depthwise-separable: a Conv2D k x k (Cin -> Cout) becomes a SeparableConv2D, i.e. a
  depthwise k x k conv followed by a 1x1 pointwise conv: MACs per output pixel go from
  k*k*Cin*Cout to k*k*Cin + Cin*Cout. Initialization: for each input channel c the original
  kernel slice W[:, :, c, :] (k*k x Cout) is replaced by its best rank-1 approximation
  u_c v_c^T (truncated SVD); u_c is the depthwise filter of channel c and v_c its row of
  the pointwise kernel. Then fine-tuning (optionally distilled) recovers the accuracy.
- Low-rank: a Dense (in -> out) becomes Dense(rank, linear, no bias) -> Dense(out) with
  W ~= (U_r S_r)(V_r^T) from a truncated SVD; an Embedding (V x d) becomes
  Embedding(V, rank) -> Dense(d, no bias) the same way. At full rank the pair reproduces the
  original outputs up to float rounding.

Supported layers are the tables SEPARABLE and LOW_RANK; anything else is left alone and the
plan records why.
"""
from __future__ import annotations

import numpy as np

from compress import graph
from compress.errors import InvalidParameterError, NotApplicableError


def _require_rewrites(plan: dict, nothing: str, why_none: str) -> dict:
    """The plan, or NotApplicableError saying why no layer is rewritten."""
    if not plan["layers"]:
        raise NotApplicableError(
            f"{nothing} ({summarize_kept(plan['kept']) if plan['kept'] else why_none})")
    return plan


def summarize_kept(kept: dict[str, str], shown: int = 3) -> str:
    """'reason: a, b, c and 32 more; other reason: d' (a MobileNet has 35 1x1 convs)."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in kept.items():
        by_reason.setdefault(reason, []).append(name)
    parts = []
    for reason, names in by_reason.items():
        listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
        parts.append(f"{listed}: {reason}")
    return "; ".join(parts)


# ------------------------------------------------------------------ depthwise-separable

def separable_init(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, k, Cin, Cout) kernel -> depthwise (k, k, Cin, 1) and pointwise (1, 1, Cin, Cout)."""
    kh, kw, cin, cout = kernel.shape
    depthwise = np.zeros((kh, kw, cin, 1), kernel.dtype)
    pointwise = np.zeros((1, 1, cin, cout), kernel.dtype)
    for c in range(cin):
        u, s, vt = np.linalg.svd(kernel[:, :, c, :].reshape(kh * kw, cout), full_matrices=False)
        scale = np.sqrt(s[0])
        depthwise[:, :, c, 0] = (u[:, 0] * scale).reshape(kh, kw)
        pointwise[0, 0, c, :] = vt[0] * scale
    return depthwise, pointwise


def _separable_reason(layer, min_input_channels: int) -> str | None:
    kh, kw = layer.kernel_size
    cin = int(layer.input_shape[-1])
    if getattr(layer, "groups", 1) != 1:
        return "grouped convolution"
    if kh * kw == 1:
        return "already 1x1"
    if layer.data_format != "channels_last":
        return "channels_first"
    if cin < min_input_channels:
        # With one input channel every output channel would be a scaled copy of one
        # spatial filter: the layer would lose almost all its expressiveness.
        return f"only {cin} input channel(s) (< min_input_channels={min_input_channels})"
    return None


SEPARABLE = {"Conv2D": _separable_reason}


def plan_separable(model, skip_layers=(), min_input_channels: int = 4) -> dict:
    plan = {"min_input_channels": min_input_channels, "layers": {}, "kept": {}}
    for layer in graph.candidate_layers(model, SEPARABLE, skip_layers, plan["kept"]):
        reason = SEPARABLE[type(layer).__name__](layer, min_input_channels)
        if reason:
            plan["kept"][layer.name] = reason
        else:
            plan["layers"][layer.name] = {"replacement": f"{layer.name}_separable",
                                          "kernel_size": list(layer.kernel_size)}
    return _require_rewrites(plan, f"no Conv2D of {model.name!r} can be made depthwise-separable",
                             "the model has no Conv2D layer")


def _separable_chain(conv, step: dict):
    from core.tf_setup import keras

    c = conv.get_config()
    sep = keras.layers.SeparableConv2D(
        c["filters"], c["kernel_size"], strides=c["strides"], padding=c["padding"],
        data_format=c["data_format"], dilation_rate=c["dilation_rate"], depth_multiplier=1,
        activation=c["activation"], use_bias=c["use_bias"], name=step["replacement"])
    weights = conv.get_weights()
    depthwise, pointwise = separable_init(weights[0])
    return [sep], {sep.name: [depthwise, pointwise] + weights[1:]}


def apply_separable(model, plan: dict):
    return graph.replace_layers(model, plan, _separable_chain)


# ------------------------------------------------------------------ low rank

def _first_weight(layer) -> np.ndarray:
    """The matrix to factorize: a Dense kernel (in, out) or an Embedding table (V, d)."""
    return layer.get_weights()[0]


def _dense_pair(layer, rank: int, left: np.ndarray, right: np.ndarray):
    from core.tf_setup import keras

    c = layer.get_config()
    first = keras.layers.Dense(rank, activation=None, use_bias=False, name=f"{layer.name}_lowrank_u")
    second = keras.layers.Dense(c["units"], activation=c["activation"], use_bias=c["use_bias"],
                                name=f"{layer.name}_lowrank_v")
    rest = layer.get_weights()[1:]
    return [first, second], {first.name: [left], second.name: [right] + rest}


def _embedding_pair(layer, rank: int, left: np.ndarray, right: np.ndarray):
    from core.tf_setup import keras

    c = layer.get_config()
    first = keras.layers.Embedding(c["input_dim"], rank, mask_zero=c["mask_zero"],
                                   input_length=c.get("input_length"),
                                   name=f"{layer.name}_lowrank_u")
    second = keras.layers.Dense(c["output_dim"], use_bias=False, name=f"{layer.name}_lowrank_v")
    return [first, second], {first.name: [left], second.name: [right]}


# class -> (the matrix to factorize, builder of the replacing pair)
LOW_RANK = {
    "Dense": (_first_weight, _dense_pair),
    "Embedding": (_first_weight, _embedding_pair),
}


def choose_rank(full_rank: int, rank: int | None, rank_ratio: float | None) -> int:
    if rank is not None:
        return min(int(rank), full_rank)
    return max(1, int(round(full_rank * rank_ratio)))


def plan_low_rank(model, rank: int | None = None, rank_ratio: float | None = None,
                  skip_layers=(), require_saving: bool = True) -> dict:
    """Which Dense/Embedding layers get which rank. With `require_saving`, a layer whose
    factorized pair would not have fewer parameters is left alone (and the plan says so)."""
    if (rank is None) == (rank_ratio is None):
        raise InvalidParameterError("low-rank needs exactly one of rank (int >= 1) or "
                                    "rank_ratio (0 < r <= 1)")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise InvalidParameterError(f"rank must be an integer >= 1, got {rank!r}")
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        raise InvalidParameterError(f"rank_ratio must be in (0, 1], got {rank_ratio!r}")
    plan = {"rank": rank, "rank_ratio": rank_ratio, "layers": {}, "kept": {}}
    for layer in graph.candidate_layers(model, LOW_RANK, skip_layers, plan["kept"]):
        rows, cols = LOW_RANK[type(layer).__name__][0](layer).shape
        r = choose_rank(min(rows, cols), rank, rank_ratio)
        if require_saving and r * (rows + cols) >= rows * cols:
            plan["kept"][layer.name] = (f"rank {r} of a {rows}x{cols} matrix saves no parameters "
                                        f"({r * (rows + cols)} >= {rows * cols})")
            continue
        plan["layers"][layer.name] = {"shape": [rows, cols], "rank": r,
                                      "params_before": rows * cols,
                                      "params_after": r * (rows + cols)}
    return _require_rewrites(plan, f"no Dense/Embedding of {model.name!r} gets smaller at this rank",
                             "the model has no Dense or Embedding layer")


def _low_rank_pair(layer, step: dict):
    matrix_of, pair_of = LOW_RANK[type(layer).__name__]
    u, s, vt = np.linalg.svd(matrix_of(layer).astype(np.float64), full_matrices=False)
    r = step["rank"]
    return pair_of(layer, r, (u[:, :r] * s[:r]).astype(np.float32), vt[:r].astype(np.float32))


def apply_low_rank(model, plan: dict):
    return graph.replace_layers(model, plan, _low_rank_pair)
