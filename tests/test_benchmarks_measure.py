"""Timing math on known inputs (no models, no TensorFlow): percentiles, spread, loops, Pareto."""
import numpy as np
import pytest

from core import measure
from benchmarks.report import pareto_front


def test_latency_stats_on_known_samples():
    # 1..100 ms: numpy's linear interpolation gives p50 = 50.5, p90 = 90.1, p99 = 99.01.
    stats = measure.latency_stats(np.arange(1, 101))
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert (stats["min_ms"], stats["max_ms"], stats["n"]) == (1, 100, 100)


def test_latency_stats_single_sample_and_empty():
    assert measure.latency_stats([2.0])["p99_ms"] == 2.0
    with pytest.raises(measure.MeasureError, match="at least one sample"):
        measure.latency_stats([])


def test_spread_is_range_over_median():
    assert measure.spread_pct([1.0, 1.1, 0.9]) == pytest.approx(20.0)
    assert measure.spread_pct([5.0]) == 0.0
    assert measure.spread_pct([0.0, 0.0]) == 0.0


def test_summaries_pool_rounds_and_report_spread():
    rounds = [np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0])]
    lat = measure.summarize_single_stream(rounds)
    assert lat["round_p50_ms"] == [1.0, 2.0]
    assert lat["spread_pct"] == pytest.approx(100 * (2 - 1) / 1.5)
    assert lat["n"] == 6 and lat["p50_ms"] == pytest.approx(1.5)
    # Offline: 3 batches of 10 items in 3 ms -> 10,000 items/s; 3 in 6 ms -> 5,000 items/s.
    thr = measure.summarize_offline(rounds, batch_size=10)
    assert thr["round_items_per_s"] == pytest.approx([10_000, 5_000])
    assert thr["items_per_s"] == pytest.approx(7_500)


def test_time_calls_honours_warmup_repeats_and_rounds():
    calls = []
    per_round = measure.time_calls(calls.append, warmup=4, min_repeats=7, rounds=3, budget_s=0)
    assert [len(r) for r in per_round] == [7, 7, 7]
    assert calls == list(range(4 + 21))  # warm-up calls come first and are not timed


def test_time_calls_runs_until_budget_with_cap():
    per_round = measure.time_calls(lambda i: None, warmup=0, min_repeats=1, rounds=1,
                                   budget_s=10, max_repeats=500)
    assert len(per_round[0]) == 500


@pytest.mark.parametrize("kwargs, message", [
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"min_repeats": 0}, "min_repeats must be >= 1"),
    ({"budget_s": -1}, "budget_s must be >= 0"),
    ({"min_repeats": 10, "max_repeats": 5}, "max_repeats"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(measure.MeasureError, match=message):
        measure.time_calls(lambda i: None, **kwargs)


class _RecordingRunner:
    """A stand-in runner: records the shapes it was called with."""

    def __init__(self):
        self.shapes = []

    def predict(self, x):
        self.shapes.append(x.shape)
        return x


def test_single_stream_issues_batch1_queries_cycling_through_rows():
    runner = _RecordingRunner()
    out = measure.single_stream(runner, np.zeros((3, 4)), warmup=2, min_repeats=5, rounds=2,
                                budget_s=0)
    assert set(runner.shapes) == {(1, 4)}
    assert len(runner.shapes) == 2 + 10 and out["n"] == 10
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "spread_pct", "n"} <= set(out)


def test_offline_uses_full_batches_even_from_few_rows():
    runner = _RecordingRunner()
    out = measure.offline(runner, np.zeros((5, 2)), 8, warmup=1, min_repeats=3, rounds=1,
                          budget_s=0)
    assert set(runner.shapes) == {(8, 2)}
    assert out["batch_size"] == 8 and out["n_batches"] == 3


def test_empty_example_is_rejected():
    with pytest.raises(measure.MeasureError, match="at least one input"):
        measure.single_stream(_RecordingRunner(), np.zeros((0, 4)))


def test_pareto_front():
    # (latency, accuracy): b is dominated by a (slower and less accurate); d ties c on
    # latency with lower accuracy.
    points = [(1.0, 0.90), (2.0, 0.85), (3.0, 0.95), (3.0, 0.93), (0.5, 0.80)]
    assert pareto_front(points) == [4, 0, 2]
