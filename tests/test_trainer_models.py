"""Every registered model builds, trains a step and predicts the right shape."""
import numpy as np
import pytest

from trainer.models import ModelInputs, ModelOptions, UnknownModelError, get_model, list_models
from core.tasks import get_task


def _inputs_for(spec) -> tuple[ModelInputs, np.ndarray]:
    rng = np.random.default_rng(0)
    classes = get_task(spec.task).num_classes
    if spec.kind == "text":
        return ModelInputs((20,), classes, vocab_size=50), rng.integers(0, 50, (4, 20)).astype("int32")
    if spec.kind == "vector":
        return ModelInputs((2,), classes), rng.random((4, 2)).astype("float32")
    return ModelInputs((28, 28, 1), classes), rng.random((4, 28, 28, 1)).astype("float32")


@pytest.mark.parametrize("name", list_models())
def test_model_builds_trains_a_step_and_predicts(name):
    spec = get_model(name)
    inputs, x = _inputs_for(spec)
    options = ModelOptions(width=spec.defaults.get("width", 1.0), dropout=0.1,
                           normalization=spec.defaults.get("normalization", "none"),
                           resolution=spec.defaults.get("resolution"))
    model = spec.build(inputs, options)
    binary = inputs.num_classes == 2
    model.compile("adam", "binary_crossentropy" if binary else "sparse_categorical_crossentropy")
    y = np.array([0, 1, 0, 1], dtype="float32" if binary else "int64")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    out = model.predict(x, verbose=0)
    assert out.shape == (4, 1 if binary else inputs.num_classes)
    assert np.all((out >= 0) & (out <= 1))
    if not binary:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError, match="fashion_cnn") as err:
        get_model("fashion_cn")
    assert "Valid models" in str(err.value)


def test_width_scales_the_hand_written_models():
    spec = get_model("fashion_mlp")
    small = spec.build(ModelInputs((28, 28, 1), 10), ModelOptions(width=0.5))
    full = spec.build(ModelInputs((28, 28, 1), 10), ModelOptions(width=1.0))
    assert small.layers[2].units == 64 and full.layers[2].units == 128


def test_lecture_shapes():
    sign = get_model("sign_mlp").build(ModelInputs((28, 28, 1), 24), ModelOptions())
    assert [layer.units for layer in sign.layers if hasattr(layer, "units")] == [1024, 512, 256, 24]
    gap = get_model("imdb_gap").build(ModelInputs((256,), 2, 10_000), ModelOptions())
    assert gap.layers[1].input_dim == 10_000 and gap.layers[1].output_dim == 16
    xor = get_model("xor_mlp").build(ModelInputs((2,), 2), ModelOptions())
    assert [layer.units for layer in xor.layers if hasattr(layer, "units")] == [8, 1]
