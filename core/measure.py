"""Timing loops and their statistics. numpy only (no TensorFlow, no onnxruntime import).

Two scenarios, named after MLPerf Inference's:
  - `single_stream`: batch-1 queries issued one after another, each timed on its own;
    reports latency percentiles (p50/p90/p99) and the mean.
  - `offline`: fixed-size batches back to back; reports throughput (items/s).

Both warm up first (untimed calls: lazy allocation, kernel selection, caches), then run
`rounds` rounds. A round runs at least `min_repeats` calls and goes on until it has used
`budget_s` seconds (or `max_repeats` calls), so fast models get many samples and slow ones
still finish on time. Between rounds, `spread_pct` = 100 * (max - min) / median of the
rounds' headline numbers (p50 latency, or throughput): a large spread means a noisy machine,
and the numbers should be read with that in mind rather than trusted to the microsecond.

Percentiles use numpy's default linear interpolation between order statistics over all
timed samples pooled across rounds.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

DEFAULT_WARMUP = 20
DEFAULT_MIN_REPEATS = 50
DEFAULT_ROUNDS = 3
DEFAULT_BUDGET_S = 0.5
DEFAULT_MAX_REPEATS = 200_000


class MeasureError(ValueError):
    """Bad measurement settings or inputs; the message names the argument."""


def latency_stats(samples_ms) -> dict:
    """p50/p90/p99/mean/min/max of latency samples in milliseconds."""
    s = np.asarray(samples_ms, dtype=np.float64).ravel()
    if s.size == 0:
        raise MeasureError("latency_stats needs at least one sample, got none")
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(s.mean()), "min_ms": float(s.min()), "max_ms": float(s.max()),
            "n": int(s.size)}


def spread_pct(values) -> float:
    """100 * (max - min) / median of per-round values; 0 for a single round."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise MeasureError("spread_pct needs at least one value, got none")
    median = float(np.median(v))
    if median == 0:
        return 0.0
    return float(100.0 * (v.max() - v.min()) / median)


def _check_settings(warmup: int, min_repeats: int, rounds: int, budget_s: float,
                    max_repeats: int) -> None:
    for name, value, low in (("warmup", warmup, 0), ("min_repeats", min_repeats, 1),
                             ("rounds", rounds, 1), ("max_repeats", max_repeats, 1)):
        if int(value) < low:
            raise MeasureError(f"{name} must be >= {low}, got {value}")
    if budget_s < 0:
        raise MeasureError(f"budget_s must be >= 0, got {budget_s}")
    if max_repeats < min_repeats:
        raise MeasureError(f"max_repeats ({max_repeats}) must be >= min_repeats ({min_repeats})")


def time_calls(call: Callable[[int], object], *, warmup: int = DEFAULT_WARMUP,
               min_repeats: int = DEFAULT_MIN_REPEATS, rounds: int = DEFAULT_ROUNDS,
               budget_s: float = DEFAULT_BUDGET_S,
               max_repeats: int = DEFAULT_MAX_REPEATS) -> list[np.ndarray]:
    """Time `call(i)` (i counts calls from 0) and return each round's per-call times in ms.

    The clock is `time.perf_counter_ns` read right before and after each call, so the loop's
    own bookkeeping is not part of a sample.
    """
    _check_settings(warmup, min_repeats, rounds, budget_s, max_repeats)
    clock = time.perf_counter_ns
    i = 0
    for _ in range(warmup):
        call(i)
        i += 1
    budget_ns = int(budget_s * 1e9)
    per_round = []
    for _ in range(rounds):
        samples = []
        round_start = clock()
        while True:
            t0 = clock()
            call(i)
            t1 = clock()
            samples.append(t1 - t0)
            i += 1
            n = len(samples)
            if n >= max_repeats or (n >= min_repeats and t1 - round_start >= budget_ns):
                break
        per_round.append(np.asarray(samples, dtype=np.float64) / 1e6)
    return per_round


def summarize_single_stream(per_round: list[np.ndarray]) -> dict:
    """Latency stats over all rounds, plus each round's p50 and the spread between them."""
    stats = latency_stats(np.concatenate(per_round))
    round_p50 = [float(np.percentile(r, 50)) for r in per_round]
    stats.update({"rounds": len(per_round), "round_p50_ms": round_p50,
                  "spread_pct": spread_pct(round_p50)})
    return stats


def _queries(example: np.ndarray) -> list[np.ndarray]:
    """Batch-1 queries: each row of `example` as its own (1, ...) array, sliced ahead of time
    so that slicing is not timed."""
    x = np.asarray(example)
    if x.ndim == 0 or len(x) == 0:
        raise MeasureError(f"example must be a batch of at least one input, got shape {x.shape}")
    return [np.ascontiguousarray(x[i:i + 1]) for i in range(len(x))]


def single_stream(runner, example: np.ndarray, *, warmup: int = DEFAULT_WARMUP,
                  min_repeats: int = DEFAULT_MIN_REPEATS, rounds: int = DEFAULT_ROUNDS,
                  budget_s: float = DEFAULT_BUDGET_S,
                  max_repeats: int = DEFAULT_MAX_REPEATS) -> dict:
    """Batch-1 latency of `runner.predict`: queries cycle through the rows of `example`
    (one row is fine), one after another.

    Returns p50_ms, p90_ms, p99_ms, mean_ms, min_ms, max_ms, n, rounds, round_p50_ms,
    spread_pct.
    """
    queries = _queries(example)
    count = len(queries)
    predict = runner.predict
    per_round = time_calls(lambda i: predict(queries[i % count]), warmup=warmup,
                           min_repeats=min_repeats, rounds=rounds, budget_s=budget_s,
                           max_repeats=max_repeats)
    return summarize_single_stream(per_round)


def summarize_offline(per_round: list[np.ndarray], batch_size: int) -> dict:
    """Throughput per round (items / total time of the round's calls) and their median."""
    per_round_ips = [batch_size * len(r) / (r.sum() / 1e3) for r in per_round]
    batch_ms = np.concatenate(per_round)
    return {"batch_size": int(batch_size), "items_per_s": float(np.median(per_round_ips)),
            "round_items_per_s": [float(v) for v in per_round_ips],
            "batch_p50_ms": float(np.percentile(batch_ms, 50)),
            "batch_p99_ms": float(np.percentile(batch_ms, 99)),
            "n_batches": int(batch_ms.size), "rounds": len(per_round),
            "spread_pct": spread_pct(per_round_ips)}


def _batches(x: np.ndarray, batch_size: int, limit: int = 8) -> list[np.ndarray]:
    """Up to `limit` distinct batches of exactly `batch_size` rows, built ahead of time
    (rows repeat when `x` has fewer than `batch_size`)."""
    if batch_size < 1:
        raise MeasureError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(x, "ndim", 1) == 0 or len(x) == 0:
        raise MeasureError(f"x must be a batch of at least one input, got shape {x.shape}")
    # Only the first `limit` batches are used: convert just those rows (of a lazily
    # preprocessed split, core.preprocessing.LazyInputs, only those are computed).
    x = np.asarray(x[: limit * batch_size])
    n_batches = max(1, min(limit, len(x) // batch_size))
    idx = np.arange(n_batches * batch_size) % len(x)
    return [np.ascontiguousarray(x[idx[b * batch_size:(b + 1) * batch_size]])
            for b in range(n_batches)]


def offline(runner, x: np.ndarray, batch_size: int, *, warmup: int = 3, min_repeats: int = 5,
            rounds: int = DEFAULT_ROUNDS, budget_s: float = DEFAULT_BUDGET_S,
            max_repeats: int = DEFAULT_MAX_REPEATS) -> dict:
    """Throughput of `runner.predict` on batches of `batch_size` rows of `x`, back to back.

    Returns batch_size, items_per_s (median over rounds), round_items_per_s, batch_p50_ms,
    batch_p99_ms, n_batches, rounds, spread_pct.
    """
    batches = _batches(x, batch_size)
    count = len(batches)
    predict = runner.predict
    per_round = time_calls(lambda i: predict(batches[i % count]), warmup=warmup,
                           min_repeats=min_repeats, rounds=rounds, budget_s=budget_s,
                           max_repeats=max_repeats)
    return summarize_offline(per_round, batch_size)
