"""Knowledge distillation at a temperature: a student learns from a teacher's softened outputs.

Loss per example (Hinton et al.):

    alpha * CE(label, p_s) + (1 - alpha) * T^2 * KL(softmax(log p_t / T) || softmax(log p_s / T))

The models end in softmax (or a sigmoid, read as the two probabilities [1 - p, p]), so the
artifacts carry probabilities, not logits. The temperature is applied to log-probabilities:
log p = z - logsumexp(z) differs from the logits z by a per-example constant, which softmax
cancels, so softmax(log p / T) = softmax(z / T) exactly: the classic softened targets, with no
logits needed. T^2 keeps the soft term's gradients at the scale of the hard one's as T grows.
Probabilities are clipped at 1e-7 before the log (a saturated softmax gives exact zeros).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-7


def _two_columns(p):
    """(N, 1) sigmoid outputs -> (N, 2) probabilities; (N, C) softmax outputs unchanged."""
    from core.tf_setup import tf

    return tf.concat([1 - p, p], axis=-1) if p.shape[-1] == 1 else p


def teacher_log_probs(teacher, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    p = np.asarray(teacher.predict(x, batch_size=batch_size, verbose=0), np.float64)
    if p.shape[-1] == 1:
        p = np.concatenate([1 - p, p], axis=-1)
    return np.log(np.clip(p, EPS, 1.0)).astype(np.float32)


def distillation_loss(temperature: float, alpha: float, classes: int):
    """Keras loss: y_true = [one-hot label (classes), teacher log-probabilities (classes)],
    y_pred = the student's probabilities ((N, classes), or (N, 1) for a sigmoid)."""
    from core.tf_setup import tf

    t = float(temperature)

    def loss(y_true, y_pred):
        hard, teacher_log = y_true[:, :classes], y_true[:, classes:]
        student_log = tf.math.log(tf.clip_by_value(_two_columns(y_pred), EPS, 1.0))
        ce = -tf.reduce_sum(hard * student_log, axis=-1)
        soft_teacher = tf.nn.softmax(teacher_log / t)
        kl = tf.reduce_sum(soft_teacher * (tf.nn.log_softmax(teacher_log / t)
                                           - tf.nn.log_softmax(student_log / t)), axis=-1)
        return alpha * ce + (1 - alpha) * t * t * kl

    return loss


def _accuracy(classes: int):
    from core.tf_setup import tf

    def accuracy(y_true, y_pred):
        return tf.cast(tf.equal(tf.argmax(y_true[:, :classes], -1),
                                tf.argmax(_two_columns(y_pred), -1)), tf.float32)

    return accuracy


def distill(student, teacher, x: np.ndarray, y: np.ndarray, *, temperature: float, alpha: float,
            epochs: int, learning_rate: float, batch_size: int) -> dict:
    """Train `student` in place against `teacher`'s softened outputs; the Keras history."""
    from core.tf_setup import keras

    x = np.asarray(x)
    if epochs <= 0:
        return {}
    teacher_log = teacher_log_probs(teacher, x)
    classes = teacher_log.shape[1]
    hard = np.eye(classes, dtype=np.float32)[np.asarray(y).astype(np.int64).reshape(-1)]
    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    student.compile(optimizer=keras.optimizers.Adam(schedule),
                    loss=distillation_loss(temperature, alpha, classes),
                    metrics=[_accuracy(classes)])
    history = student.fit(x, np.concatenate([hard, teacher_log], axis=1), epochs=epochs,
                          batch_size=batch_size, shuffle=True, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def zoo_student(name: str, input_shape: tuple, num_classes: int, kind: str):
    """A fresh, untrained model of the trainer's zoo for this task's inputs, with the options
    the trainer would give it (its registered defaults, through the trainer's recipe)."""
    from compress.errors import InvalidParameterError
    from trainer.fit import model_options
    from trainer.models.registry import ModelInputs, UnknownModelError, get_model
    from trainer.recipe import resolve_recipe

    try:
        spec = get_model(name)
    except UnknownModelError as e:
        raise InvalidParameterError(f"technique 'distill': student: {e}") from None
    if spec.kind != kind or kind == "text":
        raise InvalidParameterError(
            f"technique 'distill': student {name!r} takes {spec.kind} inputs; this task's are "
            f"{kind} (zoo students are built for image and vector tasks; for a text task "
            f"distill into a variant: leave student null and give the step a `from`)")
    options = model_options(resolve_recipe(dict(spec.defaults)))
    return spec.build(ModelInputs(tuple(input_shape), num_classes), options)
