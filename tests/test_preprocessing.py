import numpy as np
import pytest

from core.preprocessing import (PREPROCESSORS, ImagePreprocessor, PreprocessingError,
                                TextTokenizer, VectorPreprocessor, preprocessor_from_config,
                                tokenize_words, word_ngrams)


def test_minmax_scaling_shapes_and_range():
    pre = ImagePreprocessor()
    x = np.array([[0, 255] * 14] * 28, np.uint8)
    out = pre(x)
    assert out.shape == (1, 28, 28, 1) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert pre(np.stack([x, x])).shape == (2, 28, 28, 1)
    assert pre(np.stack([x, x])[..., None]).shape == (2, 28, 28, 1)


def test_integer_float_and_bool_pixels_scale_alike():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 28, 28))
    as_float = ImagePreprocessor()(pixels.astype(np.float64))
    for same in (pixels, pixels.astype(np.uint8), pixels.tolist()):
        assert np.array_equal(ImagePreprocessor()(same), as_float)
    assert ImagePreprocessor()(np.ones((28, 28), dtype=bool)).max() == np.float32(1 / 255)


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    pre = ImagePreprocessor.fit(x, "standardize")
    out = pre(x)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    again = preprocessor_from_config(pre.to_config())
    assert np.array_equal(again(x), out)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((27, 28)), "28x28"),
    (np.zeros((2, 28, 28, 3)), "28x28"),
    (np.full((28, 28), 256.0), "0..255"),
    (np.full((28, 28), -1.0), "0..255"),
    (np.full((28, 28), np.nan), "NaN"),
    (np.array([["a"] * 28] * 28), "numbers"),
    (np.full((28, 28), 1 + 2j), "numbers"),
    (np.full((28, 28), 300, dtype=np.int64), "0..255"),
])
def test_image_bad_input_is_explained(bad, match):
    with pytest.raises(PreprocessingError, match=match):
        ImagePreprocessor()(bad)


def test_unknown_scaling_lists_valid():
    with pytest.raises(ValueError, match="minmax, standardize"):
        ImagePreprocessor("zscore")


def test_tokenize_words_strips_br_and_lowercases():
    assert tokenize_words("Great<br /><br />MOVIE, isn't it?") == ["great", "movie", "isn't", "it"]


def test_tokenizer_round_trip_and_oov(tmp_path):
    tok = TextTokenizer.fit(["the cat sat", "the cat ran", "the dog"], vocab_size=5, max_length=6)
    # 3 words fit (5 ids minus pad and OOV): the, cat (most frequent), then 'dog' < 'ran' < 'sat'
    assert tok.vocabulary == ["the", "cat", "dog"]
    ids = tok(["The cat flew"])
    assert ids.tolist() == [[2, 3, TextTokenizer.OOV_ID, 0, 0, 0]]
    assert tok.decode(ids[0]) == "the cat <oov>"
    tok.save_vocabulary(tmp_path)
    again = preprocessor_from_config(tok.to_config(), tmp_path)
    assert np.array_equal(again(["the dog sat", "x"]), tok(["the dog sat", "x"]))


def test_bigram_tokenizer_interleaves_pairs_and_round_trips(tmp_path):
    assert word_ngrams(["not", "good", "at", "all"], 2) == [
        "not", "good", "not good", "at", "good at", "all", "at all"]
    assert word_ngrams(["a", "b", "c"], 3) == ["a", "b", "a b", "c", "b c", "a b c"]
    tok = TextTokenizer.fit(["not good", "not good", "very good"], vocab_size=6, max_length=5,
                            ngrams=2)
    assert tok.vocabulary == ["good", "not", "not good", "very"]  # counts 3, 2, 2, 1
    # Tokens: not, good, "not good", very, "good very" (not in the vocabulary: OOV), then
    # truncation to 5 drops good and "very good".
    assert tok(["not good, very good"]).tolist() == [[3, 2, 4, 5, 1]]
    assert tok.decode([3, 2, 4, 1, 0]) == "not good not good <oov>"
    tok.save_vocabulary(tmp_path)
    config = tok.to_config()
    assert config["ngrams"] == 2
    again = preprocessor_from_config(config, tmp_path)  # what serve builds from the manifest
    texts = ["Not good<br />at all.", "very very good", ""]
    assert np.array_equal(again(texts), tok(texts))
    with pytest.raises(ValueError, match="ngrams must be 1, 2 or 3, got 4"):
        TextTokenizer.fit(["a"], ngrams=4)


def test_word_ngrams_match_the_plain_definition():
    def reference(words, n):  # each word, then the n-grams (2..n) that end at it
        return [" ".join(words[i - k + 1:i + 1]) for i in range(len(words))
                for k in range(1, min(n, i + 1) + 1)]

    words = "this is not a good film at all".split()
    for n in (1, 2, 3):
        for length in range(len(words) + 1):
            assert word_ngrams(words[:length], n) == reference(words[:length], n), (n, length)


def test_tokenizer_truncates_and_handles_empty():
    tok = TextTokenizer(["a"], max_length=3)
    assert tok(["a a a a a", ""]).tolist() == [[2, 2, 2], [0, 0, 0]]
    with pytest.raises(PreprocessingError, match="text #1 must be a string"):
        tok(["ok", 3])


def test_vocabulary_size_mismatch_is_caught(tmp_path):
    tok = TextTokenizer(["a", "b"], max_length=4)
    tok.save_vocabulary(tmp_path)
    cfg = dict(tok.to_config(), vocab_size=10)
    with pytest.raises(ValueError, match="manifest says 10"):
        preprocessor_from_config(cfg, tmp_path)


@pytest.mark.parametrize("kind", sorted(PREPROCESSORS))
def test_every_preprocessor_is_rebuilt_from_its_manifest_config(kind, tmp_path):
    from core import data
    from core.tasks import TASKS

    task = next(t for t in TASKS.values() if t.kind == kind)
    raw = data.load(task.dataset, "train").x[:20]
    fitted = {"image": lambda: ImagePreprocessor.fit(raw, "standardize"),
              "text": lambda: TextTokenizer.fit(raw, vocab_size=50, max_length=16),
              "vector": lambda: VectorPreprocessor()}[kind]()
    if kind == "text":
        fitted.save_vocabulary(tmp_path)
    config = fitted.to_config()
    assert config["type"] == kind
    again = preprocessor_from_config(config, tmp_path)
    assert type(again) is PREPROCESSORS[kind]
    np.testing.assert_array_equal(again(raw), fitted(raw))
