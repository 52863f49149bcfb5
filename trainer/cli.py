"""Command line of `trainer`. Each subcommand imports what it needs when it runs, so that
`--help` and the data commands start without TensorFlow."""
from __future__ import annotations

import argparse
import sys

from trainer import data


def _cmd_datasets(args) -> int:
    names = args.names or [n for n in data.DATASETS]
    for name in names:
        for split in data.SPLITS:
            try:
                ds = data.load(name, split, data_dir=args.data_dir)
            except (data.DatasetNotFoundError, ValueError) as e:
                print(f"{name:14s} {split:5s}  not available: {e}")
                continue
            classes = len(set(ds.y.tolist()))
            print(f"{name:14s} {split:5s} {len(ds):7d} examples {classes:3d} classes  from {ds.source}")
    return 0


def _cmd_download(args) -> int:
    path = data.download(args.name)
    print(f"{args.name}: cached under {path}")
    return 0


def _cmd_make_samples(args) -> int:
    for name, path in data.make_samples(args.source).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("datasets", help="show which datasets are available and from where")
    s.add_argument("names", nargs="*", help=f"datasets (default: all of {', '.join(data.DATASETS)})")
    s.add_argument("--data-dir", help="folder with full datasets (default: $DATA_DIR)")
    s.set_defaults(func=_cmd_datasets)

    s = sub.add_parser("download", help="fill the Keras cache from the internet")
    s.add_argument("name", choices=[n for n in data.DATASETS if n != "xor"])
    s.set_defaults(func=_cmd_download)

    s = sub.add_parser("make-samples", help="cut data/samples from full .npz files")
    s.add_argument("--from", dest="source", required=True, help="folder with the full .npz files")
    s.set_defaults(func=_cmd_make_samples)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
