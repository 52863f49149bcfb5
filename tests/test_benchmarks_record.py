"""`python -m benchmarks record`: the compact, committable summary of a run (benchmarks/record.py)."""
from __future__ import annotations

import copy
import json

from benchmarks.cli import main
from benchmarks.record import build_record, render_record_markdown
from core.artifacts import list_variants, update_manifest
from serve.fixtures import write_fixture_artifacts
from tests.test_benchmarks_report import FIXED_BENCH, _row


def _bench_of_fixtures() -> dict:
    bench = copy.deepcopy(FIXED_BENCH)
    onnx = _row("fixture_mlp", "onnx", 0.81, 0.012, 1_500_000, 200_000)
    litert = _row("fixture_mlp", "litert", 0.80, 0.009, 1_800_000, 150_000)
    broken = {**_row("fixture_mlp", "keras", 0.0, 1.0, 1, 1), "error": "no model.keras"}
    other = _row("fixture_mlp-int8", "onnx", 0.79, 0.006, 2_500_000, 80_000,
                 parent="fixture_mlp")
    bench["results"] = [litert, onnx, broken, other]
    return bench


def test_one_row_per_variant_with_every_runtime_and_what_serve_runs(tmp_path):
    root = write_fixture_artifacts(tmp_path / "artifacts")
    record = build_record(_bench_of_fixtures(), root, "make all")
    rows = {r["variant"]: r for r in record["rows"]}
    assert list(rows) == ["fixture_mlp", "fixture_mlp-int8"]  # roots first, failed rows out
    mlp = rows["fixture_mlp"]
    assert mlp["accuracy"] == 0.81  # ONNX Runtime's, the reference runtime
    assert mlp["p50_us"] == {"litert": 9.0, "onnx": 12.0}
    assert mlp["items_per_s_32"] == {"litert": 1_800_000, "onnx": 1_500_000}
    assert mlp["gzip_kb"] == {"litert": round(75_000 / 1024, 1), "onnx": round(100_000 / 1024, 1)}
    assert mlp["served"] == "onnx" and rows["fixture_mlp-int8"]["served"] is None
    assert mlp["macs"] == 101_632 and mlp["teacher"] is None
    assert rows["fixture_mlp-int8"]["technique"] == "prune"
    text = render_record_markdown(record)
    assert "| fixture_mlp | train | 81.00% | 101,632 | 101,770 | 12 / 9 / - |" in text
    assert "| fixture_mlp-int8 | prune of fixture_mlp | 79.00% |" in text
    assert record["selection"]["fashion_mnist"]["variant"] == "fixture_mlp"


def test_the_command_writes_json_and_markdown_named_by_stem(tmp_path):
    root = write_fixture_artifacts(tmp_path / "artifacts")
    bench = _bench_of_fixtures()
    bench["settings"]["data_dir"] = "../shared/data"
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    assert main(["record", "--bench", str(tmp_path / "bench.json"), "--artifacts", str(root),
                 "--out", str(tmp_path / "results"), "--stem", "full-data"]) == 0
    written = json.loads((tmp_path / "results" / "full-data.json").read_text())
    assert written["command"] == "DATA_DIR=../shared/data make all"
    assert (tmp_path / "results" / "full-data.md").read_text().startswith(
        "# Summary of `DATA_DIR=../shared/data make all`")



def test_every_trained_variant_is_listed_benchmarked_or_not(tmp_path):
    # The bench fixture measured fashion_mnist only; sign_mnist and imdb were trained but not
    # benchmarked (like the lecture tasks of a full-data run) and still get a training row.
    root = write_fixture_artifacts(tmp_path / "artifacts")
    sign = list_variants(root, "sign_mnist")[0]
    update_manifest(sign, metrics={"test_accuracy": 0.9625, "n_test": 400, "n_train": 1800,
                                   "epochs_run": 3, "train_seconds": 12.5})
    record = build_record(_bench_of_fixtures(), root, "make all")
    trained = {(r["task"], r["variant"]): r for r in record["trained"]}
    assert {task for task, _ in trained} == {"fashion_mnist", "sign_mnist", "imdb"}
    assert trained[("sign_mnist", sign.name)]["train_seconds"] == 12.5
    text = render_record_markdown(record)
    assert "## Trained models" in text
    assert f"| sign_mnist | {sign.name} | 96.25% | 400 | 1,800 | 3 | 12.5 |" in text


def test_the_served_line_names_the_rule_that_chose_it(tmp_path):
    from core.artifacts import select_variant

    root = write_fixture_artifacts(tmp_path / "artifacts")
    select_variant(root, "fashion_mnist", "fixture_mlp", reason={
        "variant": "fixture_mlp", "baseline": "fixture_mlp", "baseline_accuracy": 0.9361,
        "accuracy": 0.9352, "budget_points": 1.0, "latency_p50_ms": 0.08, "rule": "fastest",
        "objective": {"min_accuracy": 0.93, "max_latency_ms": 0.1}})
    text = render_record_markdown(build_record(_bench_of_fixtures(), root, "make all"))
    assert ("Served: `fixture_mlp` on onnx, 93.52%: the fastest variant at most 1 point(s) below "
            "the best trained model `fixture_mlp` (93.61%) and at least 93% and batch-1 p50 at "
            "most 100 us (`compress select`).") in text
