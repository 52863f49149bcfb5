"""Magnitude pruning with TFMOT `prune_low_magnitude`: zero the smallest weights during a short
fine-tune, then `strip_pruning`. Dense kernels keep their shape, so this buys gzip size (the
zeros compress), not latency; 2:4 sparsity is the pattern sparse tensor cores can exploit.

Layers are wrapped one by one (clone_model + clone_function, the caller's model is not
changed): every layer with weights that is not in `skip_layers` must be one TFMOT can wrap,
otherwise an UnsupportedLayerError names it and the way out.
"""
from __future__ import annotations

from dataclasses import dataclass

from compress import graph
from compress.errors import NotApplicableError, UnsupportedLayerError

SCHEDULES = ("polynomial", "constant")
# 2:4 (m-by-n) sparsity applies to these kernels only (TFMOT's own restriction).
M_BY_N_LAYERS = ("Conv2D", "Dense")


@dataclass(frozen=True)
class PruneSettings:
    sparsity: float = 0.8
    schedule: str = "polynomial"       # "polynomial": 0 -> sparsity over the fine-tune; "constant"
    m_by_n: tuple[int, int] | None = None  # e.g. (2, 4): sparsity is then exactly 1 - m/n
    skip_layers: tuple[str, ...] = ()
    # Layers with fewer kernel weights than this stay dense: pruning a first conv of 288
    # weights or a 128x10 classifier costs accuracy and saves almost no bytes.
    min_layer_weights: int = 2048


def _schedule(settings: PruneSettings, total_steps: int):
    import tensorflow_model_optimization as tfmot

    frequency = max(1, total_steps // 20)
    if settings.schedule == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(settings.sparsity, begin_step=0,
                                                     frequency=frequency)
    # Reach the target after ~70% of the steps, then keep training at that sparsity.
    end = max(1, int(total_steps * 0.7))
    return tfmot.sparsity.keras.PolynomialDecay(0.0, settings.sparsity, begin_step=0,
                                                end_step=end, frequency=frequency)


def prunable_layers(model, settings: PruneSettings) -> dict[str, str]:
    """{layer name: "prune" | why it is left dense}; raises for a layer TFMOT cannot wrap."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    graph.check_selectors(model, settings.skip_layers, "skip_layers")
    plan = {}
    for layer in model.layers:
        cls = type(layer).__name__
        if not layer.weights:
            continue
        if graph.matches(layer, settings.skip_layers):
            plan[layer.name] = "in skip_layers"
        elif isinstance(layer, prunable_layer.PrunableLayer) or \
                PruneRegistry._is_rnn_layer(layer) or PruneRegistry._is_mha_layer(layer):
            plan[layer.name] = "prune"
        elif not PruneRegistry.supports(layer):
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} ({cls}) cannot be wrapped by TFMOT prune_low_magnitude; "
                f"add {layer.name!r} (or {cls!r}) to skip_layers to leave it dense, or make it a "
                f"tfmot.sparsity.keras.PrunableLayer")
        elif not PruneRegistry._weight_names(layer):
            plan[layer.name] = "no prunable weights"
        elif _kernel_size(layer) < settings.min_layer_weights:
            plan[layer.name] = (f"{_kernel_size(layer)} kernel weights < min_layer_weights="
                                f"{settings.min_layer_weights}")
        elif settings.m_by_n and cls not in M_BY_N_LAYERS:
            plan[layer.name] = f"TFMOT has no {settings.m_by_n[0]}:{settings.m_by_n[1]} support for {cls}"
        else:
            plan[layer.name] = "prune"
    return plan


def _kernel_size(layer) -> int:
    from core.modelstats import is_kernel

    return sum(int(w.shape.num_elements()) for w in layer.weights if is_kernel(w))


def wrap_for_pruning(model, settings: PruneSettings, total_steps: int):
    """A clone of `model` with prune_low_magnitude wrappers, and the per-layer plan."""
    import tensorflow_model_optimization as tfmot

    from core.tf_setup import keras

    plan = prunable_layers(model, settings)
    if "prune" not in plan.values():
        raise NotApplicableError(f"magnitude pruning finds no layer to prune in {model.name!r}: {plan}")
    schedule = _schedule(settings, total_steps)

    kwargs = {"pruning_schedule": schedule}
    if settings.m_by_n:
        kwargs["sparsity_m_by_n"] = tuple(settings.m_by_n)

    def wrap(layer):
        # `layer` belongs to our private copy below, so wrapping it in place is safe.
        if plan.get(layer.name) == "prune":
            return tfmot.sparsity.keras.prune_low_magnitude(layer, **kwargs)
        return layer

    private_copy = keras.models.clone_model(model)
    private_copy.set_weights(model.get_weights())
    return keras.models.clone_model(private_copy, clone_function=wrap), plan


def update_step_callbacks():
    import tensorflow_model_optimization as tfmot

    return [tfmot.sparsity.keras.UpdatePruningStep()]


def strip(model):
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras.strip_pruning(model)
