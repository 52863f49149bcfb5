"""The CI gate: compare a bench record with `benchmarks/baseline.json`.

A row (task/variant/runtime) fails when
  - its accuracy dropped by more than its budget (`accuracy_budget_pts`, percentage points), or
  - its batch-1 speed ratio against the same model's float ONNX Runtime row of the same run
    (`speedup_best`: that reference's fastest query time / the row's fastest query time) fell by
    more than `speed_tolerance` (25%) of the baseline's ratio (rows on the runtimes a
    deployment runs, `SPEED_GATED_RUNTIMES`; Keras rows are gated on accuracy only), or
  - it is in the baseline but missing from the run, or failed to run.
Ratios, not absolute times, are compared: CI machines differ and are noisy, but a variant that
was 3x faster than its float parent should stay about 3x faster on any machine.

Why only this ratio: two back-to-back `run --quick` on the shared 2-core machine (load average
about 12) changed the fastest-query ratio by at most 34% (mostly < 10%), the best-round p50
ratio by up to 58% and the throughput ratios by 90% to 580%: other processes only ever add
time, and the fastest call is the one they disturbed least. Throughput and p50 ratios stay in
the report; gating on them would fail CI on noise.

A row whose own latency rounds (or whose reference row's) disagree by more than the tolerance
cannot show a 25% regression: it is judged on a second measurement (`remeasure`, below) when
the artifacts are at hand, else listed as too noisy to judge, not failed.
Two more things keep CI from failing on noise rather than on regressions:
  - a row whose speed ratio fails is measured again before it is failed (`remeasure`: the row
    and its reference row, interleaved, more rounds), up to `REMEASURES` (2) times; only a
    regression that every re-measurement confirms fails: on a busy machine single rows run
    25-32% slower while the same code re-measures within budget.
  - the baseline stores, per row, the lowest of the run's ratio and `REMEASURES` more
    measurements: a single high one sets a bar that honest runs miss (docs/measurements.md has
    the row that taught this).
  - a baseline row missing from the run because `compress` rejected that export in this run
    (its parity check failed: int8 exports of models trained on the bundled samples agree with
    their float parent on 99.0% of inputs give or take a few images, and another CPU's float
    rounding can tip that) is listed as "not produced", with compress's reason, not failed.
    A row missing for any other reason fails.
Rows new in the run are listed and not gated. Updating the baseline is one command, after a
run on the same data as CI (the bundled samples):

    python -m benchmarks run --quick && python -m benchmarks check --update
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.artifacts import SERVING_RUNTIMES

BASELINE_SCHEMA = "tinyship.bench-baseline/1"
SPEED_TOLERANCE = 0.25
SPEED_KEYS = ("speedup_best",)
# The runtimes whose speed is gated: those serve and deployments run. Keras is measured as a
# reference for users, but a Keras call's Python overhead on a busy machine moves its ratio by
# more than the tolerance between runs, and no deployment runs it.
SPEED_GATED_RUNTIMES = SERVING_RUNTIMES
# A speed ratio fails only when the row is also this much slower in absolute terms than the
# baseline ratio predicts (from its reference row's fastest query in this run), like an
# absolute tolerance beside a relative one: on rows of 10-20 us the fastest single query moves
# by a few microseconds between runs (an fp16 ONNX row at 12.6 us reference measured 0.68x
# three times in a row against a 0.91x baseline: 4.8 us), while a regression of a served model
# that matters is many microseconds.
SPEED_NOISE_FLOOR_US = 5.0
# How many extra measurements a speed ratio gets: in the baseline (the lowest is kept) and in a
# check before a failure stands (the ratio fails only if all of them stay below the floor).
REMEASURES = 2
# Allowed accuracy drop per row, in points. The bundled test sets have 500-1000 examples (one
# point = 5-10 images), and a short fine-tune, seeded and deterministic on one machine, can end
# up a few images apart on another CPU's floating-point rounding (before compress was seeded,
# runs here differed by up to 3.2 points).
DEFAULT_ACCURACY_BUDGET_PTS = 5.0


class BaselineError(ValueError):
    """A missing/unreadable baseline or bench record, or one measured on other data."""


def load_bench(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"{path} does not exist; run `python -m benchmarks run` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BaselineError(f"{path}: not valid JSON ({e})") from None


def _row_key(row: dict) -> str:
    return f"{row['task']}/{row['variant']}/{row['runtime']}"


def _data_signature(task_info: dict) -> dict:
    # The bundled sample's path differs between clones; what matters is which data and how much.
    source = task_info["data_source"]
    return {"bundled_sample": source.startswith("bundled sample"), "n_test": task_info["n_test"]}


def _excess_us(base_row: dict | None, value: float, base_value: float) -> float | None:
    """How many microseconds slower the row's fastest query is than the baseline ratio
    predicts, from its reference row's fastest query in this run (None: not measured)."""
    ref_ms = ((base_row or {}).get("latency") or {}).get("min_ms")
    if not ref_ms or value <= 0 or base_value <= 0:
        return None
    return 1000.0 * (ref_ms / value - ref_ms / base_value)


def _reference_runtime(bench: dict) -> str | None:
    """The runtime the run's ratios are against (every row's `baseline` is variant/runtime)."""
    return next((r["baseline"].rsplit("/", 1)[1] for r in bench["results"]
                 if r.get("baseline")), None)


# remeasure(row, baseline_row) -> the row's speedup_best measured again
Remeasure = Callable[[dict, dict], float]


def _second_look(remeasure: Remeasure, row: dict, base_row: dict) -> tuple[float | None, str]:
    """(the row's speedup_best measured again, "") or (None, why that failed): a failure to
    re-measure never decides a row by itself, the caller keeps what it had."""
    try:
        return remeasure(row, base_row), ""
    except Exception as e:  # noqa: BLE001  any runner/artifact error: report it, go on
        return None, f"re-measuring failed ({type(e).__name__}: {e})"


def _speed_ratios(row: dict) -> dict:
    ratios = row.get("ratios") or {}
    return {k: v for k, v in ratios.items() if k in SPEED_KEYS}


def make_baseline(bench: dict, accuracy_budget_pts: float = DEFAULT_ACCURACY_BUDGET_PTS,
                  remeasure: Remeasure | None = None, remeasures: int = REMEASURES,
                  progress: Callable[[str], None] = lambda message: None) -> dict:
    """The baseline for `bench`. With `remeasure`, each speed ratio is measured `remeasures`
    more times and the lowest value is kept: one lucky measurement (seen: a Keras variant at
    1.13x its parent that re-measured at 0.80x) would otherwise set a bar that honest runs
    miss."""
    by_key = {_row_key(r): r for r in bench["results"]}
    rows = {}
    for row in bench["results"]:
        if row.get("error"):
            continue
        entry = {"accuracy": row["accuracy"], "accuracy_budget_pts": accuracy_budget_pts}
        is_reference = row["baseline"] == f"{row['variant']}/{row['runtime']}"
        # The reference's own ratios are 1 by definition.
        if not is_reference and row["runtime"] in SPEED_GATED_RUNTIMES:
            ratios = _speed_ratios(row)
            base_row = by_key.get(f"{row['task']}/{row['baseline']}")
            if remeasure is not None and base_row is not None and "speedup_best" in ratios:
                values = [ratios["speedup_best"]]
                for _ in range(remeasures):
                    again, why = _second_look(remeasure, row, base_row)
                    if again is None:  # the values so far are still a baseline
                        progress(f"{_row_key(row)}: {why}; keeping the values so far")
                        break
                    values.append(again)
                progress(f"{_row_key(row)}: speedup_best "
                         + ", ".join(f"{v:.2f}x" for v in values) + f"; keeping {min(values):.2f}x")
                ratios["speedup_best"] = min(values)
            entry.update({k: round(v, 4) for k, v in ratios.items()})
        rows[_row_key(row)] = entry
    return {
        "schema": BASELINE_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "from_bench_created": bench.get("created"),
        "speed_tolerance": SPEED_TOLERANCE,
        "speed_noise_floor_us": SPEED_NOISE_FLOOR_US,
        "reference_runtime": _reference_runtime(bench),
        "data": {task: _data_signature(info) for task, info in bench["tasks"].items()},
        "rows": rows,
    }


def update_baseline(bench: dict, path: str | Path,
                    accuracy_budget_pts: float = DEFAULT_ACCURACY_BUDGET_PTS,
                    remeasure: Remeasure | None = None, remeasures: int = REMEASURES,
                    progress: Callable[[str], None] = lambda message: None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    baseline = make_baseline(bench, accuracy_budget_pts, remeasure, remeasures, progress)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(baseline, indent=2) + "\n")
    tmp.replace(path)
    return path


@dataclass
class CheckResult:
    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    new_rows: list[str] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)  # speed too noisy in this run to judge
    not_produced: list[str] = field(default_factory=list)  # compress rejected it in this run
    # failed or too noisy at first, then judged on a second measurement
    remeasured: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [f"benchmark check: {'PASS' if self.ok else 'FAIL'} "
                 f"({len(self.passed)} rows within budget, {len(self.failures)} failures, "
                 f"{len(self.new_rows)} new rows not in the baseline, {len(self.not_judged)} "
                 "rows whose speed was too noisy to judge, "
                 f"{len(self.not_produced)} rows compress did not produce this run)"]
        lines += [f"  FAIL {f}" for f in self.failures]
        lines += [f"  remeasured {r}" for r in self.remeasured]
        lines += [f"  not produced {n}" for n in self.not_produced]
        lines += [f"  new  {n} (not gated; update the baseline to gate it)" for n in self.new_rows]
        lines += [f"  noisy {n}" for n in self.not_judged]
        if not self.ok:
            lines.append("If the change is intended: python -m benchmarks run --quick && "
                         "python -m benchmarks check --update, and commit benchmarks/baseline.json")
        return "\n".join(lines)


def _noise(row: dict, rows: dict, tolerance: float) -> str | None:
    """Why this row's speed ratio cannot be judged in this run, or None.

    A measurement whose own rounds disagree by more than the tolerance (its p50 spread) cannot
    reveal a regression of that size, nor can a ratio against such a reference row: other
    processes were competing for the CPU. Such rows are listed, not failed."""
    base = rows.get(f"{row['task']}/{row['baseline']}")
    for what, r in (("row", row), ("its reference row", base)):
        spread = ((r or {}).get("latency") or {}).get("spread_pct")
        if spread is not None and spread > 100 * tolerance:
            return (f"{what} p50 varied {spread:.0f}% between rounds (> {100 * tolerance:.0f}%): "
                    "the machine was busy")
    return None


def rejected_by_compress(artifacts: str | Path) -> dict[str, str]:
    """{"task/variant": why} for every variant that `compress` tried to make and rejected, as
    recorded in artifacts/<task>/compress_report.json (`would_be` names the variant)."""
    rejected = {}
    for report in sorted(Path(artifacts).glob("*/compress_report.json")):
        try:
            data = json.loads(report.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable report tells nothing; missing rows then fail as usual
        for rows in (data.get("models") or {}).values():
            for row in rows:
                if row.get("would_be") and str(row.get("status", "")).startswith("failed"):
                    rejected[f"{data.get('task')}/{row['would_be']}"] = row["status"]
    return rejected


def check(bench: dict, baseline: dict | str | Path, *, remeasure: Remeasure | None = None,
          remeasures: int = REMEASURES, rejected: dict[str, str] | None = None) -> CheckResult:
    """Compare `bench` with `baseline`. `remeasure` (optional) re-measures, up to `remeasures`
    times, a row whose speed ratio failed or whose run was too noisy to judge; `rejected`
    ({"task/variant": why}, see `rejected_by_compress`) excuses baseline rows that compress
    refused to produce in this run."""
    if not isinstance(baseline, dict):
        path = Path(baseline)
        if not path.is_file():
            raise BaselineError(f"baseline {path} does not exist; create it with "
                                "`python -m benchmarks check --update`")
        baseline = json.loads(path.read_text())
    if baseline.get("schema") != BASELINE_SCHEMA:
        raise BaselineError(f"baseline schema {baseline.get('schema')!r}; expected {BASELINE_SCHEMA}")
    for task, expected in baseline["data"].items():
        info = bench["tasks"].get(task)
        if info is not None and _data_signature(info) != expected:
            raise BaselineError(
                f"{task}: the run used {_data_signature(info)} but the baseline was measured on "
                f"{expected}; accuracies are not comparable (run on the same data, or update "
                "the baseline)")
    # Baselines from before the reference moved to ONNX Runtime have no reference_runtime.
    if baseline.get("reference_runtime", "keras") != _reference_runtime(bench):
        raise BaselineError(
            f"the baseline's speed ratios are against {baseline.get('reference_runtime', 'keras')}"
            f" rows, this run's against {_reference_runtime(bench)}: update the baseline "
            "(python -m benchmarks check --update)")
    tolerance = float(baseline.get("speed_tolerance", SPEED_TOLERANCE))
    noise_floor_us = float(baseline.get("speed_noise_floor_us", SPEED_NOISE_FLOOR_US))
    result = CheckResult()
    rows = {_row_key(r): r for r in bench["results"]}
    for key, expected in baseline["rows"].items():
        row = rows.get(key)
        if row is None:
            variant_key = key.rsplit("/", 1)[0]
            if rejected and variant_key in rejected:
                result.not_produced.append(f"{key}: compress rejected it in this run "
                                           f"({rejected[variant_key]})")
            else:
                result.failures.append(f"{key}: in the baseline but not in this run")
            continue
        if row.get("error"):
            result.failures.append(f"{key}: failed to run ({row['error']})")
            continue
        problems = []
        drop_pts = 100 * (expected["accuracy"] - row["accuracy"])
        if drop_pts > expected["accuracy_budget_pts"]:
            problems.append(f"accuracy {100 * row['accuracy']:.2f}% is {drop_pts:.2f} pts below "
                            f"the baseline's {100 * expected['accuracy']:.2f}% (budget "
                            f"{expected['accuracy_budget_pts']} pts)")
        current = _speed_ratios(row)
        base_row = rows.get(f"{row['task']}/{row['baseline']}")
        gated = any(k in expected for k in SPEED_KEYS)
        noisy = _noise(row, rows, tolerance) if gated else None
        remeasured = 0  # re-measurements spent on this row
        if noisy and remeasure is not None and base_row is not None and remeasures > 0:
            # The run's rounds disagreed: judge the row on a second, interleaved measurement.
            again, why = _second_look(remeasure, row, base_row)
            if again is None:  # then it is simply not judged
                noisy += f"; {why}"
            else:
                current, remeasured = {"speedup_best": again}, 1
                result.remeasured.append(f"{key}: first measurement too noisy ({noisy}); "
                                         f"re-measured {again:.2f}x")
        if noisy and not remeasured:
            result.not_judged.append(f"{key}: speed not judged, {noisy}")
            current = {}
            expected = {k: v for k, v in expected.items() if k not in SPEED_KEYS}
        for name, base_value in expected.items():
            if name not in SPEED_KEYS:
                continue
            value = current.get(name)
            if value is None:
                problems.append(f"{name} not measured in this run (baseline {base_value:.2f}x)")
                continue
            floor = base_value * (1 - tolerance)
            if value >= floor:
                continue
            excess_us = _excess_us(base_row, value, base_value)
            if excess_us is not None and excess_us < noise_floor_us:
                result.remeasured.append(
                    f"{key}: {name} {value:.2f}x vs baseline {base_value:.2f}x, but only "
                    f"{excess_us:.1f} us slower than the baseline predicts (< {noise_floor_us:g} "
                    "us): within the noise of the fastest query")
                continue
            message = (f"{name} {value:.2f}x vs baseline {base_value:.2f}x "
                       f"({100 * (value / base_value - 1):+.0f}%, allowed -{100 * tolerance:.0f}%)")
            if remeasure is not None and base_row is not None and name == "speedup_best":
                # A regression stands only if every re-measurement confirms it.
                agains, why = [], ""
                while remeasured < remeasures:
                    again, why = _second_look(remeasure, row, base_row)
                    remeasured += 1
                    if again is None:  # the failure measured so far stands
                        break
                    agains.append(again)
                    if again >= floor:
                        break
                seen = ", ".join(f"{a:.2f}x" for a in agains)
                if agains and agains[-1] >= floor:
                    result.remeasured.append(f"{key}: {message}; re-measured {seen}, "
                                             "within budget")
                    continue
                if agains:
                    message += f"; re-measured {seen}, still below"
                if why:
                    message += f"; {why}"
            problems.append(message)
        if problems:
            result.failures.append(f"{key}: " + "; ".join(problems))
        else:
            result.passed.append(key)
    result.new_rows = sorted(set(rows) - set(baseline["rows"]))
    return result
