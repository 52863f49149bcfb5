"""Each runner on tiny real models; provider checks; model statistics from the ONNX graph."""
import numpy as np
import pytest

from core.modelstats import file_sizes, model_facts
from core.evaluate import accuracy
from core.runners import MODEL_FILES, RUNTIMES, RunnerError, open_runner, runtimes_for
from core.manifest import probabilities as as_probabilities
from tests.conftest import run_without_tensorflow
from tests.tiny_models import IMPORTED_TASK, IMPORTED_VARIANT
from core import data as datasets
from core.artifacts import find_variant
from core.preprocessing import ImagePreprocessor
from core.runtime import ProviderUnavailableError, usable_providers


@pytest.fixture(scope="module")
def fashion(tiny_artifacts):  # noqa: F811
    return find_variant(tiny_artifacts, "fashion_mnist", "fashion_mnist_tiny")


@pytest.fixture(scope="module")
def fashion_x():
    return ImagePreprocessor()(datasets.load("fashion_mnist", "test").x[:40])


@pytest.fixture(scope="module")
def keras_outputs(fashion, fashion_x):
    with open_runner(fashion, "keras", threads=1) as runner:
        return runner.predict(fashion_x)


def test_the_tiny_variant_has_a_file_for_every_runtime(fashion):
    assert runtimes_for(fashion) == list(RUNTIMES)


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_every_runtime_gives_the_same_probabilities(fashion, fashion_x, keras_outputs, runtime):
    with open_runner(fashion, runtime, threads=1) as runner:
        assert runner.runtime == runtime and runner.provider == "cpu"
        outputs = runner.predict(fashion_x)
        # A different batch size after the first call (LiteRT resizes its input).
        assert runner.predict(fashion_x[:1]).shape == (1, 10)
        info = runner.describe()
        assert info["threads"] == 1 and info["variant"] == "fashion_mnist_tiny"
        assert info["file"] == MODEL_FILES[runtime]
        assert accuracy(runner, fashion_x, keras_outputs.argmax(axis=1)) == 1.0
    assert outputs.shape == (40, 10)
    np.testing.assert_allclose(outputs, keras_outputs, atol=1e-5)


def test_text_runner_takes_int32_token_ids(tiny_artifacts):  # noqa: F811
    variant = find_variant(tiny_artifacts, "imdb", "imdb_tiny")
    x = variant.preprocessor()(["a wonderful film", "dull and far too long"])
    with open_runner(variant, "onnx") as runner:
        probs = as_probabilities(runner.predict(x))
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_onnx_io_binding_matches_plain_run_on_cpu(fashion, fashion_x):
    with open_runner(fashion, "onnx") as runner:
        expected = runner.predict(fashion_x[:4])
        runner.bind(fashion_x[:4])
        runner.run_bound()
        np.testing.assert_allclose(runner.bound_output(), expected, atol=1e-6)
        runner.update_bound(fashion_x[4:8])
        runner.run_bound()
        np.testing.assert_allclose(runner.bound_output(), runner.predict(fashion_x[4:8]), atol=1e-6)


def test_run_bound_before_bind_is_a_clear_error(fashion):
    with open_runner(fashion, "onnx") as runner, pytest.raises(RunnerError, match="bind"):
        runner.run_bound()


@pytest.mark.skipif("CUDAExecutionProvider" in usable_providers(), reason="CUDA is usable here")
def test_unusable_provider_is_refused_with_the_usable_ones(fashion):
    with pytest.raises(ProviderUnavailableError, match="usable: CPUExecutionProvider"):
        open_runner(fashion, "onnx", providers=("cuda",))


def test_bad_runtime_and_provider_requests(fashion):
    with pytest.raises(RunnerError, match="valid: keras, litert, onnx"):
        open_runner(fashion, "tensorrt")
    with pytest.raises(ProviderUnavailableError, match="unknown provider 'gpu'"):
        open_runner(fashion, "onnx", providers=("gpu",))
    with pytest.raises(RunnerError, match="apply to the onnx runtime"):
        open_runner(fashion, "litert", providers=("cuda",))
    with pytest.raises(RunnerError, match="cuda_graph needs the CUDA provider"):
        open_runner(fashion, "onnx", cuda_graph=True)


def test_model_stats_from_the_onnx_graph(tiny_artifacts):  # noqa: F811
    dense = find_variant(tiny_artifacts, "fashion_mnist", "fashion_mnist_tiny")
    pruned = find_variant(tiny_artifacts, "fashion_mnist", "fashion_mnist_tiny-prune-50")
    stats = model_facts(dense)
    # 784 -> 8 -> 10 MLP: weights and biases; one MAC per weight at batch 1.
    assert stats["params"] == 784 * 8 + 8 + 8 * 10 + 10
    assert stats["macs"] == 784 * 8 + 8 * 10
    assert stats["sparsity"] == 0.0 and stats["source"] == "onnx graph"
    # Half of the first kernel was zeroed: 3136 zeros among 6272 + 80 kernel weights.
    assert model_facts(pruned)["sparsity"] == pytest.approx(3136 / (6272 + 80))
    sizes = file_sizes(pruned.file("model.onnx"))
    assert sizes["gzip_bytes"] < file_sizes(dense.file("model.onnx"))["gzip_bytes"] < sizes["bytes"]


def test_onnx_runner_and_measure_import_no_tensorflow(tiny_artifacts):  # noqa: F811
    r = run_without_tensorflow(f"""
        import numpy as np
        from core.runners import open_runner
        from core.measure import single_stream
        from core.artifacts import find_variant
        v = find_variant({str(tiny_artifacts)!r}, 'fashion_mnist', 'fashion_mnist_tiny')
        r = open_runner(v, 'onnx')
        print(single_stream(r, np.zeros((1, 28, 28, 1), np.float32), budget_s=0.01)['n'] > 0)
    """)
    assert r.returncode == 0, r.stderr
    assert "True" in r.stdout


def test_tiny_artifacts_are_valid_variants(tiny_artifacts):
    from core.artifacts import list_variants

    found = {(v.task, v.name) for v in list_variants(tiny_artifacts, verify=True)}
    assert found == {("fashion_mnist", "fashion_mnist_tiny"),
                     ("fashion_mnist", "fashion_mnist_tiny-prune-50"),
                     ("sign_mnist", "sign_mnist_tiny"), ("imdb", "imdb_tiny"),
                     (IMPORTED_TASK, IMPORTED_VARIANT)}
