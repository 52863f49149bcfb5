"""Time `python -m trainer import` on a 10,000-image folder (issue 11's target: under a minute
on 2 cores, reading, converting and evaluating every image).

    python tools/bench_import.py [--images 10000] [--model artifacts/fashion_mnist/fashion_cnn/model.keras]

The folder holds real Fashion-MNIST images (the full test split from DATA_DIR when it is set,
else the bundled sample, its files repeated up to --images), written as 64x64 RGB PNGs so that
the import decodes, converts to grayscale and resizes each one. The model is the trained
fashion_cnn of `make train`. Prints the import's own summary and the wall time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_folder(root: Path, n: int) -> str:
    import numpy as np
    from PIL import Image

    from core import data
    from core.tasks import get_task

    ds = data.load("fashion_mnist", "test")
    labels = get_task("fashion_mnist").labels
    for i in range(n):
        img, label = ds.x[i % len(ds)], int(ds.y[i % len(ds)])
        folder = root / labels[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        rgb = np.repeat(img[..., None], 3, axis=2)
        Image.fromarray(rgb).resize((64, 64), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.png")
    return ds.source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--model", default=str(REPO / "artifacts/fashion_mnist/fashion_cnn/model.keras"))
    args = p.parse_args(argv)
    if not Path(args.model).exists():
        sys.exit(f"{args.model} not found: run `make train` first (or pass --model)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        source = write_folder(tmp / "images", args.images)
        print(f"wrote {args.images:,} PNGs (64x64 RGB) from {source} in "
              f"{time.perf_counter() - start:.1f} s")
        labels = tmp / "labels.txt"
        from core.tasks import get_task

        labels.write_text("\n".join(n.replace("/", "-") for n in get_task("fashion_mnist").labels))
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "trainer", "import", "--model", args.model,
                              "--data", str(tmp / "images"), "--task", "bench_import",
                              "--labels", str(labels), "--artifacts", str(tmp / "artifacts")],
                             cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        seconds = time.perf_counter() - start
        print(run.stdout.strip())
        if run.returncode:
            print(run.stderr[-2000:], file=sys.stderr)
            return run.returncode
        print(f"import of {args.images:,} images (read, convert, export, evaluate): "
              f"{seconds:.1f} s wall, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
