"""The techniques a recipe can ask for: one small object per technique, in one table.

A technique validates its parameters (`resolve`), names the variant it makes (`suffix`), and
`apply`s itself to a parent variant, writing model files into the new variant's staging
directory and returning an Outcome (the per-layer plan, the Keras model when there is one,
which files it wrote and the model they must agree with). The pipeline does the rest
(float export + parity, evaluation, profiling, latency). Support grows by adding a row.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from compress import factorize, fcn, graph, structured
from compress.errors import InvalidParameterError, UnknownTechniqueError
from compress.training import FineTune


@dataclass(frozen=True)
class Param:
    default: object
    check: Callable[[object], bool]
    expected: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def _is_names(v) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)


SKIP = Param([], _is_names, "a list of layer names or layer class names")
FINE_TUNE = {
    "epochs": Param(None, lambda v: v is None or (_is_int(v) and v >= 0),
                    "an integer >= 0 (default: the recipe's epochs)"),
    "learning_rate": Param(1e-3, lambda v: isinstance(v, (int, float)) and 0 < v < 1,
                           "a number in (0, 1)"),
    "batch_size": Param(64, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "distill": Param(False, lambda v: isinstance(v, bool), "true or false"),
    "alpha": Param(0.5, lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
                   "a number in [0, 1] (weight of the true label)"),
}


@dataclass
class Inputs:
    """What a technique gets: the parent variant and the data of the run."""

    parent: object                # core.artifacts.Variant
    load_parent_model: Callable   # () -> tf_keras model (raises when the parent has none)
    train_x: np.ndarray
    train_y: np.ndarray
    calibration_x: np.ndarray
    activation: str
    num_classes: int
    default_epochs: int
    load_variant_model: Callable | None = None  # (variant name of the task) -> tf_keras model


@dataclass
class Outcome:
    plan: dict
    keras_model: object = None          # saved as model.keras; float-exported unless quantized
    quantized_files: list[str] = field(default_factory=list)  # written by the technique
    reference_model: object = None      # the model its quantized files must agree with
    reference_onnx: Path | None = None  # ... or the ONNX model they must agree with
    history: dict = field(default_factory=dict)
    save_keras: bool = True
    # ONNX Runtime settings model.onnx needs (the manifest's "runtime"; see
    # core.runtime.variant_session)
    onnxruntime_options: dict = field(default_factory=dict)


class Technique(abc.ABC):
    name = ""
    description = ""
    params: dict[str, Param] = {}
    trains = False

    def resolve(self, given: dict | None) -> dict:
        """Defaults merged with `given`; unknown keys and invalid values are errors."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise InvalidParameterError(
                f"technique {self.name!r}: unknown parameter(s) {unknown}; valid: "
                f"{', '.join(sorted(self.params))}")
        resolved = {}
        for key, spec in self.params.items():
            value = given.get(key, spec.default)
            if key in given and not spec.check(value):
                raise InvalidParameterError(
                    f"technique {self.name!r}: {key}={value!r} is invalid; expected {spec.expected}")
            resolved[key] = list(value) if isinstance(value, tuple) else value
        self.check(resolved)
        return resolved

    def check(self, params: dict) -> None:
        """Cross-parameter checks (override)."""

    def teacher(self, params: dict, parent: str) -> str | None:
        """The variant whose outputs the step trains on (the manifest's lineage.teacher): the
        parent when a fine-tune is distilled from it."""
        return parent if params.get("distill") and self.trains else None

    @abc.abstractmethod
    def suffix(self, params: dict) -> str:
        """The variant name's suffix: `<parent>-<suffix>`."""

    @abc.abstractmethod
    def apply(self, inputs: Inputs, params: dict, out_dir: Path) -> Outcome:
        """Write the model files into `out_dir` and describe what was done."""

    def fine_tune_settings(self, inputs: Inputs, params: dict) -> FineTune:
        epochs = params["epochs"] if params["epochs"] is not None else inputs.default_epochs
        return FineTune(epochs, params["learning_rate"], params["batch_size"],
                        params.get("distill", False), params["alpha"])

    def fine_tune(self, model, inputs: Inputs, params: dict, teacher=None, callbacks=()) -> dict:
        from compress.training import fine_tune

        return fine_tune(model, inputs.train_x, inputs.train_y, activation=inputs.activation,
                         num_classes=inputs.num_classes,
                         settings=self.fine_tune_settings(inputs, params), teacher=teacher,
                         callbacks=callbacks)


def _fmt(x: float) -> str:
    return f"{x:g}"


class MagnitudePrune(Technique):
    name = "prune"
    description = "TFMOT magnitude pruning (polynomial/constant schedule or 2:4), fine-tune, strip"
    trains = True
    params = {
        "sparsity": Param(0.8, _is_fraction, "a fraction in (0, 1), e.g. 0.8"),
        "schedule": Param("polynomial", lambda v: v in ("polynomial", "constant"),
                          "'polynomial' or 'constant'"),
        "m_by_n": Param(None, lambda v: v is None or (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(i) for i in v)
            and 0 < v[0] < v[1]), "null or [m, n] with 0 < m < n, e.g. [2, 4]"),
        "skip_layers": SKIP,
        "min_layer_weights": Param(2048, lambda v: _is_int(v) and v >= 0,
                                   "an integer >= 0 (smaller layers stay dense)"),
        **FINE_TUNE,
        "learning_rate": Param(5e-4, FINE_TUNE["learning_rate"].check, FINE_TUNE["learning_rate"].expected),
    }

    def suffix(self, p):
        if p["m_by_n"]:
            return f"prune-{p['m_by_n'][0]}of{p['m_by_n'][1]}"
        return f"prune-s{_fmt(p['sparsity'])}" + ("-const" if p["schedule"] == "constant" else "")

    def apply(self, inputs, p, out_dir):
        from compress import magnitude

        source = inputs.load_parent_model()
        sparsity = 1 - p["m_by_n"][0] / p["m_by_n"][1] if p["m_by_n"] else p["sparsity"]
        settings = magnitude.PruneSettings(sparsity, p["schedule"],
                                           tuple(p["m_by_n"]) if p["m_by_n"] else None,
                                           tuple(p["skip_layers"]), p["min_layer_weights"])
        fine_tune = self.fine_tune_settings(inputs, p)
        steps = max(1, fine_tune.epochs) * int(np.ceil(len(inputs.train_x) / fine_tune.batch_size))
        wrapped, plan = magnitude.wrap_for_pruning(source, settings, steps)
        history = self.fine_tune(wrapped, inputs, p, teacher=source,
                                 callbacks=magnitude.update_step_callbacks())
        return Outcome({"layers": plan, "target_sparsity": sparsity},
                       magnitude.strip(wrapped), history=history)


class GraphRewrite(Technique):
    """A technique that plans a rewrite of the parent Keras model's layers, builds the
    rewritten model and fine-tunes it with the parent as teacher. Subclasses name the planner
    (`plan(model, *params)` -> what to rewrite, recorded in the manifest), the parameters it
    takes, and the rewriter (`rewrite(model, plan)` -> the new tf_keras model)."""

    trains = True
    planner: Callable[..., dict]
    plan_params: tuple[str, ...]
    rewriter: Callable

    def apply(self, inputs, p, out_dir):
        source = inputs.load_parent_model()
        graph.check_selectors(source, p["skip_layers"], "skip_layers")
        plan = type(self).planner(source, *(p[k] for k in self.plan_params))
        model = type(self).rewriter(source, plan)
        history = self.fine_tune(model, inputs, p, teacher=source)
        return Outcome(plan, model, history=history)


class ChannelPrune(GraphRewrite):
    name = "channels"
    description = "structured pruning: drop the lowest-L1 filters/units, rebuild smaller, fine-tune"
    params = {
        "ratio": Param(0.5, _is_fraction, "a fraction of channels to remove in (0, 1)"),
        "round_to": Param(8, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "skip_layers": SKIP,
        **FINE_TUNE,
    }

    def suffix(self, p):
        return f"channels-{_fmt(p['ratio'])}"

    planner = structured.plan_channel_pruning
    plan_params = ("ratio", "skip_layers", "round_to")
    rewriter = structured.apply_channel_pruning


class Separable(GraphRewrite):
    name = "separable"
    description = "Conv2D k x k -> depthwise k x k + pointwise 1x1 (rank-1 SVD init), fine-tune"
    params = {
        "min_input_channels": Param(4, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "skip_layers": SKIP,
        **FINE_TUNE,
        "distill": Param(True, FINE_TUNE["distill"].check, FINE_TUNE["distill"].expected),
    }

    def suffix(self, p):
        return "separable"

    planner = factorize.plan_separable
    plan_params = ("skip_layers", "min_input_channels")
    rewriter = factorize.apply_separable


def _is_unit_fraction(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1)


RANK = {
    "rank": Param(None, lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "rank_ratio": Param(None, _is_unit_fraction, "null or a fraction of the full rank in (0, 1]"),
    "energy": Param(None, _is_unit_fraction,
                    "null or the fraction in (0, 1] of the squared singular values to keep"),
}


class _RankChoice:
    """rank, rank_ratio or energy (factorize.choose_rank): exactly one; rank_ratio 0.25 when
    none is given."""

    def check(self, p):
        if p["rank"] is None and p["rank_ratio"] is None and p["energy"] is None:
            p["rank_ratio"] = 0.25
        error = factorize.rank_spec_error(p["rank"], p["rank_ratio"], p["energy"])
        if error:
            raise InvalidParameterError(f"technique {self.name!r}: {error}")

    @staticmethod
    def rank_suffix(p) -> str:
        if p["rank"] is not None:
            return f"k{p['rank']}"
        if p["energy"] is not None:
            return f"e{_fmt(p['energy'])}"
        return f"r{_fmt(p['rank_ratio'])}"


class LowRank(_RankChoice, GraphRewrite):
    name = "lowrank"
    description = ("Dense/Embedding (and Conv2D through layer_classes: k x k conv to r filters "
                   "+ 1x1) -> low-rank pair from a truncated SVD, fine-tune")
    params = {
        **RANK,
        "layer_classes": Param(list(factorize.LOW_RANK_DEFAULT_CLASSES), lambda v: _is_names(v)
                               and len(v) > 0 and set(v) <= set(factorize.LOW_RANK),
                               f"a non-empty list of {', '.join(factorize.LOW_RANK)}"),
        "skip_layers": SKIP,
        **FINE_TUNE,
        "distill": Param(True, FINE_TUNE["distill"].check, FINE_TUNE["distill"].expected),
    }

    def suffix(self, p):
        classes = "" if sorted(p["layer_classes"]) == sorted(factorize.LOW_RANK_DEFAULT_CLASSES) \
            else "-" + "-".join(sorted(c.lower() for c in p["layer_classes"]))
        return f"lowrank-{self.rank_suffix(p)}{classes}"

    @staticmethod
    def planner(model, rank, rank_ratio, energy, layer_classes, skip_layers):
        return factorize.plan_low_rank(model, rank, rank_ratio, skip_layers, energy=energy,
                                       layer_classes=tuple(layer_classes))

    plan_params = ("rank", "rank_ratio", "energy", "layer_classes", "skip_layers")
    rewriter = factorize.apply_low_rank


class Bottleneck(_RankChoice, GraphRewrite):
    name = "bottleneck"
    description = "k x k Conv2D -> 1x1 reduction to r channels + k x k conv (SVD init), fine-tune"
    params = {
        **RANK,
        "skip_layers": SKIP,
        **FINE_TUNE,
        "distill": Param(True, FINE_TUNE["distill"].check, FINE_TUNE["distill"].expected),
    }

    def suffix(self, p):
        return f"bottleneck-{self.rank_suffix(p)}"

    planner = factorize.plan_bottleneck
    plan_params = ("rank", "rank_ratio", "energy", "skip_layers")
    rewriter = factorize.apply_bottleneck


class FcToConv(GraphRewrite):
    name = "fc_to_conv1x1"
    description = ("Flatten/global-pooling + Dense head -> convolutions (fully convolutional), "
                   "weights carried over exactly; optional fine-tune")
    params = {
        "skip_layers": SKIP,
        **FINE_TUNE,
        # The rewrite is exact: fine-tuning is an option, not a repair.
        "epochs": Param(0, FINE_TUNE["epochs"].check, FINE_TUNE["epochs"].expected),
    }

    def suffix(self, p):
        return "fc-to-conv" + (f"-ft{p['epochs']}" if p["epochs"] else "")

    planner = fcn.plan_fc_to_conv
    plan_params = ("skip_layers",)
    rewriter = fcn.apply_fc_to_conv


def _is_name_or_none(v) -> bool:
    return v is None or (isinstance(v, str) and len(v) > 0)


class Distill(Technique):
    name = "distill"
    description = ("knowledge distillation at temperature T (KL on softened log-probabilities): "
                   "a teacher variant trains the parent variant or a fresh zoo model")
    trains = True
    params = {
        # Neither given: self-distillation, the parent fine-tuned on its own softened outputs.
        "teacher": Param(None, _is_name_or_none,
                         "null (the parent) or the name of a variant of this task"),
        "student": Param(None, _is_name_or_none,
                         "null (the parent variant) or a trainer zoo model name (trained from scratch)"),
        "temperature": Param(4.0, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                             and 0 < v <= 100, "a number in (0, 100]"),
        "alpha": Param(0.1, FINE_TUNE["alpha"].check, FINE_TUNE["alpha"].expected),
        "epochs": FINE_TUNE["epochs"],
        "learning_rate": FINE_TUNE["learning_rate"],
        "batch_size": FINE_TUNE["batch_size"],
    }

    def teacher(self, params, parent):
        # alpha = 1 trains on the labels alone (the control a distilled student is compared with)
        return None if params["alpha"] == 1 else params["teacher"] or parent

    def suffix(self, p):
        student = f"-{p['student']}" if p["student"] else ""
        teacher = f"-from-{p['teacher']}" if p["teacher"] else ""
        alpha = "" if p["alpha"] == self.params["alpha"].default else f"-a{_fmt(p['alpha'])}"
        return f"distill{student}{teacher}-t{_fmt(p['temperature'])}{alpha}"

    def apply(self, inputs, p, out_dir):
        from compress import distill
        from core.manifest import ArtifactError

        teacher_name = p["teacher"] or inputs.parent.name
        try:
            teacher = (inputs.load_parent_model() if teacher_name == inputs.parent.name
                       else inputs.load_variant_model(teacher_name))
        except ArtifactError as e:
            raise InvalidParameterError(
                f"technique {self.name!r}: teacher={teacher_name!r}: {e}") from None
        if p["student"]:
            spec = inputs.parent.input
            student = distill.zoo_student(p["student"], tuple(spec.shape[1:]), inputs.num_classes,
                                          spec.kind)
        else:
            from core.tf_setup import keras

            # A copy: the parent's loaded model is shared by the run (it may be the teacher).
            parent = inputs.load_parent_model()
            student = keras.models.clone_model(parent)
            student.set_weights(parent.get_weights())
        settings = self.fine_tune_settings(inputs, {**p, "distill": True})
        history = distill.distill(student, teacher, inputs.train_x, inputs.train_y,
                                  temperature=p["temperature"], alpha=p["alpha"],
                                  epochs=settings.epochs, learning_rate=settings.learning_rate,
                                  batch_size=settings.batch_size)
        plan = {"teacher": self.teacher(p, inputs.parent.name),
                "student": p["student"] or inputs.parent.name,
                "student_from_scratch": bool(p["student"]), "temperature": p["temperature"],
                "alpha": p["alpha"], "loss": "alpha*CE + (1-alpha)*T^2*KL(log-probabilities / T)"}
        return Outcome(plan, student, history=history)


class QuantizationAware(Technique):
    name = "qat"
    description = ("TFMOT quantization-aware fine-tune -> int8 TFLite + int8 QDQ ONNX (int8 "
                   "weights and int32 biases at the QAT grids, activations at the QAT ranges)")
    trains = True
    params = {
        "skip_layers": SKIP,
        **FINE_TUNE,
        "learning_rate": Param(1e-4, FINE_TUNE["learning_rate"].check, FINE_TUNE["learning_rate"].expected),
    }

    def suffix(self, p):
        return "qat-int8"

    def teacher(self, params, parent):
        # The QAT fine-tune trains on the labels only, whatever `distill` says.
        return None

    def apply(self, inputs, p, out_dir):
        from compress import quantize

        source = inputs.load_parent_model()
        qat, plan = quantize.qat_model(source, p["skip_layers"])
        history = self.fine_tune(qat, inputs, p)
        onnx_plan = quantize.qat_onnx(qat, out_dir / "model.onnx")
        (out_dir / "model.tflite").write_bytes(quantize.qat_tflite(qat))
        # A QAT model reloads only inside tfmot's quantize_scope, so the deployable forms
        # (ONNX, TFLite) are what the variant carries.
        return Outcome({"layers": plan, "onnx": onnx_plan}, qat, ["model.onnx", "model.tflite"],
                       reference_model=qat, history=history, save_keras=False,
                       onnxruntime_options=self.onnxruntime_options(p))

    def onnxruntime_options(self, p: dict) -> dict:
        # A layer QAT left float (skip_layers, or a kernel TFMOT does not quantize) keeps float
        # weights between int8 activations; ORT's WeightBiasQuantization would quantize them
        # on its own terms (imdb_gap: 1.6% of top classes flip against the same graph unfused).
        return {"disabled_optimizers": ["WeightBiasQuantization"]}


class TFLitePostTraining(Technique):
    name = "tflite"
    description = "TFLite post-training quantization: dynamic range, full int8, or float16"
    params = {"mode": Param("int8", lambda v: v in ("dynamic", "int8", "float16"),
                            "'dynamic', 'int8' or 'float16'")}

    def suffix(self, p):
        return f"tflite-{p['mode']}"

    def apply(self, inputs, p, out_dir):
        from compress import quantize

        source = inputs.load_parent_model()
        blob = quantize.tflite_post_training(source, p["mode"], inputs.calibration_x)
        (out_dir / "model.tflite").write_bytes(blob)
        plan = {"mode": p["mode"], "calibration_examples": len(inputs.calibration_x)
                if p["mode"] == "int8" else 0}
        return Outcome(plan, None, ["model.tflite"], reference_model=source)


class _OnnxPostTraining(Technique):
    def apply(self, inputs, p, out_dir):
        src = inputs.parent.file("model.onnx")
        dst = out_dir / "model.onnx"
        plan = self.convert(src, dst, inputs, p)
        return Outcome(plan, None, ["model.onnx"], reference_onnx=src,
                       onnxruntime_options=self.onnxruntime_options(p))

    @abc.abstractmethod
    def convert(self, src: Path, dst: Path, inputs: Inputs, p: dict) -> dict:
        """Write the converted `src` to `dst`; return the plan for the lineage."""

    def onnxruntime_options(self, p: dict) -> dict:
        """ONNX Runtime settings the converted model must run with (none by default)."""
        return {}


class OnnxDynamicInt8(_OnnxPostTraining):
    name = "onnx_dynamic"
    description = "ONNX Runtime dynamic int8 (weights int8, activations quantized at run time)"
    # Per-channel weight scales: per-tensor ones flip the top-1 class of small CNNs too often.
    params = {"per_channel": Param(True, lambda v: isinstance(v, bool), "true or false")}

    def suffix(self, p):
        return "onnx-dyn-int8" + ("-pc" if p["per_channel"] else "")

    def convert(self, src, dst, inputs, p):
        from compress import quantize

        quantize.onnx_dynamic_int8(src, dst, p["per_channel"])
        return {"weights": "int8", "activations": "dynamic uint8", **p}


class OnnxStaticInt8(_OnnxPostTraining):
    name = "onnx_static"
    description = "ONNX Runtime static QDQ int8 with calibration (minmax, entropy, percentile)"
    params = {
        "calibration": Param("minmax", lambda v: v in ("minmax", "entropy", "percentile"),
                             "'minmax', 'entropy' or 'percentile'"),
        "per_channel": Param(True, lambda v: isinstance(v, bool), "true or false"),
        # Keep the first convolution (and what follows it up to the next weighted layer) in
        # float. With one input channel its int8 kernel is a K=9 GEMM that runs slower than
        # the float one (docs/measurements.md has the per-operator profile).
        "float_first_layer": Param(False, lambda v: isinstance(v, bool), "true or false"),
    }

    def suffix(self, p):
        return (f"onnx-qdq-int8-{p['calibration']}" + ("-pc" if p["per_channel"] else "")
                + ("-float-first" if p["float_first_layer"] else ""))

    def convert(self, src, dst, inputs, p):
        from compress import quantize

        kept_float = quantize.onnx_static_int8(
            src, dst, inputs.calibration_x, p["calibration"], p["per_channel"],
            inputs.parent.input.name, p["float_first_layer"])
        plan = {"format": "QDQ", "weights": "int8", "activations": "uint8",
                "calibration_examples": len(inputs.calibration_x), **p}
        if kept_float:
            plan["float_nodes"] = kept_float
        return plan

    def onnxruntime_options(self, p):
        # With the first layer float, ORT's QDQ propagation would move the first
        # QuantizeLinear in front of the float MaxPool, which then runs on uint8 in a slow
        # NCHW kernel (54 us instead of 2 us per Fashion image): keep the graph as written.
        if p["float_first_layer"]:
            return {"disabled_optimizers": ["QDQPropagationTransformer"]}
        return {}


class OnnxFloat16(_OnnxPostTraining):
    name = "onnx_fp16"
    description = "ONNX float16 weights and compute (onnxconverter-common, float32 inputs/outputs)"
    params = {}

    def suffix(self, p):
        return "onnx-fp16"

    def convert(self, src, dst, inputs, p):
        from compress import quantize

        quantize.onnx_float16(src, dst)
        return {"dtype": "float16", "keep_io_types": True}


TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    MagnitudePrune(), ChannelPrune(), Separable(), LowRank(), Bottleneck(), FcToConv(), Distill(),
    QuantizationAware(),
    TFLitePostTraining(), OnnxDynamicInt8(), OnnxStaticInt8(), OnnxFloat16(),
)}


def get_technique(name: str) -> Technique:
    try:
        return TECHNIQUES[name]
    except (KeyError, TypeError):
        import difflib

        close = difflib.get_close_matches(str(name), TECHNIQUES, n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise UnknownTechniqueError(
            f"unknown technique {name!r}{hint}; valid: {', '.join(TECHNIQUES)}") from None
