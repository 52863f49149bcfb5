"""Prepare what `make bench-gpu` needs on a borrowed GPU machine, in one ignored folder.

    python tools/gpu_bundle.py [--artifacts artifacts] [--out .gpu/bench]

The GPU machine has no TensorFlow and reaches no package registry, and one command there may
bring at most 64 MiB along (../shared/gpu/README.md: the onnxruntime-gpu wheel goes over first,
in chunks). This copies, for each built-in served task, its float variants (trained, `parent:
null`) and the variant compress selected (their manifest, model.onnx and vocabulary: what the
ONNX Runtime path reads), with `selected.json`, into `<out>/artifacts`, and the
test split each task is measured on into `<out>/data/<dataset>.npz` (the bundled samples: a few
MB); then prints the total size and the command to run there, e.g.

    source .gpu/env.sh && python3 -m benchmarks gpu --artifacts .gpu/bench/artifacts \\
        --data .gpu/bench/data --reports $OUT/reports --record-dir $OUT/results

Users' own tasks are left out: their data is the user's files, not in the repository.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LIMIT_BYTES = 64 * 2 ** 20


def bundle(artifacts: Path, out: Path) -> tuple[list[str], int]:
    """Copy the variants and data; returns (the variants copied as task/variant, total bytes)."""
    from core.artifacts import ArtifactError, SELECTED, list_variants, selected_variant
    from core.data import SAMPLES_DIR
    from core.tasks import SERVED_TASKS, get_task

    if out.exists():
        shutil.rmtree(out)
    copied = []
    for task in SERVED_TASKS:
        try:
            chosen = selected_variant(artifacts, task, verify=True)
        except ArtifactError as e:
            print(f"{task}: skipped ({e})", file=sys.stderr)
            continue
        keep = [v for v in list_variants(artifacts, task)
                if (v.lineage.is_root or v.name == chosen.name) and v.has_file("model.onnx")]
        for v in keep:
            # What the ONNX Runtime path reads: the manifest, model.onnx and the tokenizer's
            # vocabulary (Keras and TFLite files stay here; the GPU path never verifies them).
            dst = out / "artifacts" / task / v.name
            dst.mkdir(parents=True)
            for rel in ("manifest.json", "model.onnx",
                        v.manifest.preprocessing.get("vocab_file")):
                if rel and (v.path / rel).is_file():
                    shutil.copy2(v.path / rel, dst / rel)
            copied.append(f"{task}/{v.name}")
        shutil.copy2(artifacts / task / SELECTED, out / "artifacts" / task / SELECTED)
        dataset = get_task(task).dataset
        (out / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy2(SAMPLES_DIR / f"{dataset}.npz", out / "data" / f"{dataset}.npz")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    return copied, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--out", default=".gpu/bench")
    args = p.parse_args(argv)
    copied, total = bundle(Path(args.artifacts), Path(args.out))
    if not copied:
        print("nothing to bundle: run `make train compress` first", file=sys.stderr)
        return 2
    print(f"{len(copied)} variants and their test data in {args.out}: {total / 2 ** 20:.1f} MiB"
          + ("" if total <= LIMIT_BYTES else " (over the 64 MiB one command may bring: "
             "bring <out>/artifacts and <out>/data in two commands)"))
    for name in copied:
        print(f"  {name}")
    print(f"\non the GPU machine, after the onnxruntime-gpu chunks (../shared/gpu/README.md):\n"
          f"  source .gpu/env.sh && python3 -m benchmarks gpu --artifacts {args.out}/artifacts "
          f"--data {args.out}/data --reports $OUT/reports --record-dir $OUT/results")
    return 0 if total <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
