"""Replacing layers by cheaper factorized ones, initialized from the original weights.

- Depthwise-separable: a Conv2D k x k (Cin -> Cout) becomes a SeparableConv2D, i.e. a
  depthwise k x k conv followed by a 1x1 pointwise conv: MACs per output pixel go from
  k*k*Cin*Cout to k*k*Cin + Cin*Cout. Initialization: for each input channel c the original
  kernel slice W[:, :, c, :] (k*k x Cout) is replaced by its best rank-1 approximation
  u_c v_c^T (truncated SVD); u_c is the depthwise filter of channel c and v_c its row of
  the pointwise kernel. Then fine-tuning (optionally distilled) recovers the accuracy.
- Low-rank: a Dense (in -> out) becomes Dense(rank, linear, no bias) -> Dense(out) with
  W ~= (U_r S_r)(V_r^T) from a truncated SVD; an Embedding (V x d) becomes
  Embedding(V, rank) -> Dense(d, no bias) the same way; a Conv2D k x k (Cin -> Cout) becomes
  a k x k conv with `rank` filters followed by a 1x1 conv (the SVD of the kernel as a
  (k*k*Cin, Cout) matrix). At full rank the pair reproduces the original outputs up to float
  rounding.
- Bottleneck: a 1x1 reduction (Cin -> rank) before a k x k conv (rank -> Cout), from the SVD
  of the kernel as a (Cin, k*k*Cout) matrix; MACs per example go from
  Ho*Wo*k*k*Cin*Cout to Hi*Wi*Cin*rank + Ho*Wo*k*k*rank*Cout.

The rank of every factorization is a fixed `rank`, a `rank_ratio` of the full rank, or the
smallest rank keeping a fraction `energy` of the squared singular values (`choose_rank`).
Supported layers are the tables SEPARABLE and LOW_RANK (and k x k Conv2D for bottleneck); anything else is left alone and the
plan records why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


# ------------------------------------------------------------------ rank choice

def rank_spec_error(rank, rank_ratio, energy) -> str | None:
    """Why a (rank, rank_ratio, energy) triple is not a valid rank choice, or None."""
    given = [k for k, v in (("rank", rank), ("rank_ratio", rank_ratio), ("energy", energy))
             if v is not None]
    if len(given) != 1:
        return (f"give exactly one of rank (int >= 1), rank_ratio (0 < r <= 1) or energy "
                f"(0 < e <= 1), got {', '.join(given) or 'none'}")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        return f"rank must be an integer >= 1, got {rank!r}"
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        return f"rank_ratio must be in (0, 1], got {rank_ratio!r}"
    if energy is not None and not 0 < energy <= 1:
        return f"energy must be in (0, 1], got {energy!r}"
    return None


def choose_rank(singular_values: np.ndarray, rank: int | None = None,
                rank_ratio: float | None = None, energy: float | None = None) -> int:
    """The rank to keep of a matrix with these singular values: a fixed `rank` (capped at the
    full rank), a fraction `rank_ratio` of the full rank, or the smallest rank whose singular
    values carry at least the fraction `energy` of the squared Frobenius norm."""
    full_rank = len(singular_values)
    if rank is not None:
        return min(int(rank), full_rank)
    if rank_ratio is not None:
        return max(1, int(round(full_rank * rank_ratio)))
    power = np.cumsum(np.square(singular_values, dtype=np.float64))
    if power[-1] == 0:
        return 1
    # The small tolerance keeps energy=1.0 from asking for ranks whose singular values are
    # float rounding noise.
    return int(min(full_rank, np.searchsorted(power / power[-1], energy - 1e-12) + 1))


def _singular_values(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix.astype(np.float64), compute_uv=False)


def _truncated(matrix: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, r) and (r, cols) float32 factors whose product is the best rank-r approximation."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]).astype(np.float32), vt[:r].astype(np.float32)


# ------------------------------------------------------------------ low rank

def _first_weight(layer) -> np.ndarray:
    """The matrix to factorize: a Dense kernel (in, out) or an Embedding table (V, d)."""
    return layer.get_weights()[0]


def _conv_matrix(layer) -> np.ndarray:
    """A Conv2D kernel (k, k, Cin, Cout) as the (k*k*Cin, Cout) matrix the convolution
    multiplies every input patch by."""
    kernel = layer.get_weights()[0]
    return kernel.reshape(-1, kernel.shape[-1])


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


def _conv_pair(layer, rank: int, left: np.ndarray, right: np.ndarray):
    """k x k conv (Cin -> Cout) as a k x k conv (Cin -> rank, strides and padding of the
    original, no bias) followed by a 1x1 conv (rank -> Cout, the original's bias and
    activation). Both run at the output resolution, so MACs shrink like the parameters."""
    from core.tf_setup import keras

    c = layer.get_config()
    kh, kw, cin, cout = layer.get_weights()[0].shape
    first = keras.layers.Conv2D(rank, c["kernel_size"], strides=c["strides"], padding=c["padding"],
                                dilation_rate=c["dilation_rate"], use_bias=False,
                                name=f"{layer.name}_lowrank_u")
    second = keras.layers.Conv2D(cout, 1, activation=c["activation"], use_bias=c["use_bias"],
                                 name=f"{layer.name}_lowrank_v")
    rest = layer.get_weights()[1:]
    return [first, second], {first.name: [left.reshape(kh, kw, cin, rank)],
                             second.name: [right.reshape(1, 1, rank, cout)] + rest}


def _plain_conv_reason(layer) -> str | None:
    """Why a Conv2D cannot be factorized as a plain (ungrouped, channels-last) kernel."""
    if getattr(layer, "groups", 1) != 1:
        return "grouped convolution"
    if layer.data_format != "channels_last":
        return "channels_first"
    return None


@dataclass(frozen=True)
class LowRankRule:
    matrix: Callable        # layer -> the 2-D matrix to factorize
    pair: Callable          # (layer, rank, left, right) -> (new layers, their weights)
    unsupported: Callable = lambda layer: None   # layer -> why it is left alone, or None


LOW_RANK = {
    "Dense": LowRankRule(_first_weight, _dense_pair),
    "Embedding": LowRankRule(_first_weight, _embedding_pair),
    # The output-channel split (k x k conv to r filters, then 1x1 to Cout) rather than the
    # spatial one (k x 1 then 1 x k): it is the same SVD as Dense's (the kernel is the
    # (k*k*Cin, Cout) patch matrix), exact at full rank, keeps strides, padding and dilation
    # on one layer, and composes with `bottleneck`, which splits the input side instead.
    "Conv2D": LowRankRule(_conv_matrix, _conv_pair, _plain_conv_reason),
}
# Which classes `lowrank` factorizes unless told otherwise: convolutions are opt-in
# (`layer_classes`), so that the recipes and numbers made before they were supported keep
# their meaning.
LOW_RANK_DEFAULT_CLASSES = ("Dense", "Embedding")


def plan_low_rank(model, rank: int | None = None, rank_ratio: float | None = None,
                  skip_layers=(), require_saving: bool = True, energy: float | None = None,
                  layer_classes=LOW_RANK_DEFAULT_CLASSES) -> dict:
    """Which Dense/Embedding/Conv2D layers get which rank. With `require_saving`, a layer whose
    factorized pair would not have fewer parameters is left alone (and the plan says so)."""
    error = rank_spec_error(rank, rank_ratio, energy)
    if error:
        raise InvalidParameterError(f"low-rank: {error}")
    unknown = sorted(set(layer_classes) - set(LOW_RANK))
    if unknown or not layer_classes:
        raise InvalidParameterError(f"low-rank: layer_classes {list(layer_classes)} must be a "
                                    f"non-empty list of {', '.join(LOW_RANK)}")
    plan = {"rank": rank, "rank_ratio": rank_ratio, "energy": energy,
            "layer_classes": list(layer_classes), "layers": {}, "kept": {}}
    classes = {k: LOW_RANK[k] for k in layer_classes}
    for layer in graph.candidate_layers(model, classes, skip_layers, plan["kept"]):
        rule = LOW_RANK[type(layer).__name__]
        reason = rule.unsupported(layer)
        if reason:
            plan["kept"][layer.name] = reason
            continue
        matrix = rule.matrix(layer)
        rows, cols = matrix.shape
        r = choose_rank(_singular_values(matrix), rank, rank_ratio, energy)
        if require_saving and r * (rows + cols) >= rows * cols:
            plan["kept"][layer.name] = (f"rank {r} of a {rows}x{cols} matrix saves no parameters "
                                        f"({r * (rows + cols)} >= {rows * cols})")
            continue
        plan["layers"][layer.name] = {"shape": [rows, cols], "rank": r,
                                      "params_before": rows * cols,
                                      "params_after": r * (rows + cols)}
    return _require_rewrites(
        plan, f"no {'/'.join(layer_classes)} of {model.name!r} gets smaller at this rank",
        f"the model has no {' or '.join(layer_classes)} layer")


def _low_rank_pair(layer, step: dict):
    rule = LOW_RANK[type(layer).__name__]
    return rule.pair(layer, step["rank"], *_truncated(rule.matrix(layer), step["rank"]))


def apply_low_rank(model, plan: dict):
    return graph.replace_layers(model, plan, _low_rank_pair)


# ------------------------------------------------------------------ bottleneck

def bottleneck_matrix(kernel: np.ndarray) -> np.ndarray:
    """(k, k, Cin, Cout) kernel -> the (Cin, k*k*Cout) matrix whose row c is what input
    channel c contributes: factorizing it as A (Cin x r) B (r x k*k*Cout) is a 1x1 conv
    Cin -> r (A) followed by a k x k conv r -> Cout (B)."""
    kh, kw, cin, cout = kernel.shape
    return kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)


def bottleneck_init(kernel: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, k, Cin, Cout) kernel -> reduce (1, 1, Cin, r) and conv (k, k, r, Cout) kernels whose
    composition is the best rank-r approximation of the original (exact at r = Cin)."""
    kh, kw, cin, cout = kernel.shape
    a, b = _truncated(bottleneck_matrix(kernel), r)
    return a.reshape(1, 1, cin, r), b.reshape(r, kh, kw, cout).transpose(1, 2, 0, 3)


def bottleneck_macs(layer, r: int) -> tuple[int, int]:
    """(MACs before, MACs after) per example of a Conv2D given a rank-r 1x1 reduction: the
    reduction runs at the input resolution, the k x k conv at the output's."""
    kh, kw, cin, cout = layer.get_weights()[0].shape
    _, hi, wi, _ = layer.input_shape
    _, ho, wo, _ = layer.output_shape
    before = ho * wo * kh * kw * cin * cout
    return before, hi * wi * cin * r + ho * wo * kh * kw * r * cout


def _bottleneck_reason(layer) -> str | None:
    if tuple(layer.kernel_size) == (1, 1):
        return "already 1x1"
    return _plain_conv_reason(layer)


def plan_bottleneck(model, rank: int | None = None, rank_ratio: float | None = None,
                    energy: float | None = None, skip_layers=(),
                    require_saving: bool = True) -> dict:
    """Which k x k Conv2D layers (k > 1) get a 1x1 reduction to which width. The rank is
    chosen from the singular values of the (Cin, k*k*Cout) matrix; with `require_saving`, a
    layer whose pair would not need fewer MACs is left alone (and the plan says so)."""
    error = rank_spec_error(rank, rank_ratio, energy)
    if error:
        raise InvalidParameterError(f"bottleneck: {error}")
    plan = {"rank": rank, "rank_ratio": rank_ratio, "energy": energy, "layers": {}, "kept": {}}
    for layer in graph.candidate_layers(model, {"Conv2D"}, skip_layers, plan["kept"]):
        reason = _bottleneck_reason(layer)
        if reason:
            plan["kept"][layer.name] = reason
            continue
        matrix = bottleneck_matrix(layer.get_weights()[0])
        r = choose_rank(_singular_values(matrix), rank, rank_ratio, energy)
        before, after = bottleneck_macs(layer, r)
        if require_saving and after >= before:
            plan["kept"][layer.name] = (f"a {r}-channel reduction of {matrix.shape[0]} input "
                                        f"channels saves no MACs ({after} >= {before})")
            continue
        plan["layers"][layer.name] = {"input_channels": int(matrix.shape[0]), "rank": r,
                                      "macs_before": int(before), "macs_after": int(after)}
    return _require_rewrites(plan, f"no Conv2D of {model.name!r} gets cheaper with a bottleneck",
                             "the model has no k x k Conv2D layer")


def _bottleneck_chain(conv, step: dict):
    from core.tf_setup import keras

    c = conv.get_config()
    r = step["rank"]
    weights = conv.get_weights()
    reduce_kernel, conv_kernel = bottleneck_init(weights[0], r)
    # No bias on the reduction: zero padding of the input then stays zero after it, so the
    # pair equals the original convolution at full rank, borders included.
    reduce = keras.layers.Conv2D(r, 1, use_bias=False, name=f"{conv.name}_reduce")
    spatial = keras.layers.Conv2D(
        c["filters"], c["kernel_size"], strides=c["strides"], padding=c["padding"],
        dilation_rate=c["dilation_rate"], activation=c["activation"], use_bias=c["use_bias"],
        name=f"{conv.name}_bottleneck")
    return [reduce, spatial], {reduce.name: [reduce_kernel],
                               spatial.name: [conv_kernel] + weights[1:]}


def apply_bottleneck(model, plan: dict):
    return graph.replace_layers(model, plan, _bottleneck_chain)
