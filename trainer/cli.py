"""Command line of `trainer`. Each subcommand imports what it needs when it runs, so that
`--help`, the data commands and recipe validation start without TensorFlow."""
from __future__ import annotations

import argparse
import sys
import time

from core import data
from core.artifacts import ArtifactError, default_root
from trainer.errors import TrainerInputError
from trainer.plan import PLANS
from trainer.recipe import ALIASES, CHOICES, load_recipe_file, recipe_field_help
from core.preprocessing import ImagePreprocessor
from core.tasks import get_task


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


def _cmd_models(args) -> int:
    from trainer.models import get_model, list_models

    for name in list_models():
        spec = get_model(name)
        print(f"{name:20s} {spec.kind:6s} task {spec.task:14s} {spec.description}")
    return 0


# ---------------------------------------------------------------- recipe flags

def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe (each flag overrides the model default and --recipe)")
    for name, (type_, default) in recipe_field_help().items():
        flag = "--" + name.replace("_", "-")
        choices = f" one of {', '.join(CHOICES[name])};" if name in CHOICES else ""
        if type_ is bool:
            group.add_argument(flag, dest=f"recipe_{name}", action=argparse.BooleanOptionalAction,
                               default=None, help=f"(default {default})")
        else:
            group.add_argument(flag, dest=f"recipe_{name}", type=type_, default=None,
                               metavar=type_.__name__.upper(), help=f"{choices} (default {default!r})")
    for name, (type_, help_, _) in ALIASES.items():
        group.add_argument("--" + name.replace("_", "-"), dest=f"recipe_{name}",
                           action=argparse.BooleanOptionalAction, default=None, help=help_)


def _recipe_overrides(args) -> dict:
    return {k[len("recipe_"):]: v for k, v in vars(args).items()
            if k.startswith("recipe_") and v is not None}


def _cmd_train(args) -> int:
    from trainer.models import get_model

    spec = get_model(args.model)            # unknown names fail here, before TensorFlow loads
    if args.data:
        if not args.task:
            raise TrainerInputError("--data needs --task: the name of the task to create")
        from core.userdata import define_task

        define_task(args.artifacts, args.task, args.data, labels_file=args.labels,
                    label_column=args.label_column, test_fraction=args.test_fraction,
                    image=args.image_size)
    task = _check_task(args.task or spec.task)
    recipe_file = load_recipe_file(args.recipe) if args.recipe else None
    from trainer.recipe import resolve_recipe

    resolve_recipe(spec.defaults, recipe_file, _recipe_overrides(args))  # validate early
    from trainer.train import train_variant

    train_variant(task, args.model, recipe_file=recipe_file, overrides=_recipe_overrides(args),
                  data_dir=args.data_dir, artifacts=args.artifacts, variant=args.variant)
    return 0


def _cmd_train_all(args) -> int:
    from trainer.plan import run_jobs

    full_data = data.resolve_data_dir(args.data_dir) is not None
    plan = args.plan or ("full" if full_data else "lecture" if args.with_lecture else "served")
    jobs = PLANS[plan]
    if args.only:
        jobs = tuple(j for j in jobs if j.name in args.only or j.model in args.only)
    start = time.perf_counter()
    results = run_jobs(jobs, args.jobs, data_dir=args.data_dir, artifacts=args.artifacts,
                       retrain=args.retrain)
    print(f"\n[trainer] train-all: {len(results)} variants in {time.perf_counter() - start:.0f} s "
          f"({args.jobs} at a time)")
    for r in results:
        how = "kept, up to date" if r.kept else "with export"
        print(f"  {r.name:32s} test accuracy {r.test_accuracy:.4f}  ({r.seconds:.0f} s {how})")
    return 0


def _cmd_search(args) -> int:
    from trainer.models import get_model
    from trainer.search import DEFAULT_PARAMS, run_search

    spec = get_model(args.model)
    task = _check_task(args.task or spec.task)
    overrides = _recipe_overrides(args)
    from trainer.recipe import resolve_recipe

    resolve_recipe(spec.defaults, None, overrides)  # validate before loading data
    run_search(task, args.model, sampler=args.sampler, n_trials=args.trials, out_dir=args.out,
               storage=args.storage, study_name=args.study, overrides=overrides,
               params=tuple(args.params or DEFAULT_PARAMS), data_dir=args.data_dir,
               seed=overrides.get("seed", 0))
    return 0


def _cmd_ensemble(args) -> int:
    from trainer.ensemble import ensemble_variants

    ensemble_variants(_check_task(args.task), args.members, method=args.method, artifacts=args.artifacts,
                      variant=args.variant, data_dir=args.data_dir)
    return 0


def _cmd_import(args) -> int:
    from trainer.importer import Preprocessing, import_model

    given = {"scaling": args.scaling, "mean": args.mean, "std": args.std,
             "vocabulary": args.vocabulary, "ngrams": args.ngrams}
    options = Preprocessing.from_file(args.preprocessing, **given) if args.preprocessing else \
        Preprocessing(**{k: v for k, v in given.items() if v is not None})
    import_model(args.model, args.data, args.task, preprocessing=options,
                 labels_file=args.labels, label_column=args.label_column,
                 test_fraction=args.test_fraction, seed=args.seed, variant=args.variant,
                 artifacts=args.artifacts)
    return 0


def _image_size(text: str) -> tuple[int, int, int]:
    try:
        dims = [int(v) for v in text.lower().split("x")]
    except ValueError:
        dims = []
    if len(dims) not in (2, 3) or min(dims) < 1 or (len(dims) == 3 and dims[2] not in (1, 3)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW or HxWxC with C 1 or 3, "
                                         f"e.g. 64x64x3")
    return (*dims, 1) if len(dims) == 2 else tuple(dims)


def _floats(text: str):
    values = tuple(float(v) for v in text.split(","))
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("import", help="import your own Keras or ONNX classifier and dataset "
                       "as a task (its first variant, with its measured test accuracy)")
    s.add_argument("--model", required=True, help=".keras, .h5, SavedModel folder or .onnx")
    s.add_argument("--data", required=True, help="image folder (one subfolder per class), text "
                   "folder, CSV with a label column, or .npz (x_train, y_train, x_test, y_test)")
    s.add_argument("--task", required=True, help="name of the new task")
    s.add_argument("--variant", help="variant name (default: the model file's name)")
    s.add_argument("--labels", help="class names in the model's output order (a JSON list or "
                   "one per line; default: folder names or label values, sorted)")
    s.add_argument("--label-column", default="label", help="CSV label column (default: label)")
    s.add_argument("--test-fraction", type=float, default=0.2,
                   help="test share when the data has no train/test split (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    g = s.add_argument_group("preprocessing (what the model expects; stored in the manifest)")
    g.add_argument("--preprocessing", help="JSON or YAML file with the options below")
    g.add_argument("--scaling", choices=list(ImagePreprocessor.SCALINGS),
                   help="pixels: minmax x/255 (default), symmetric x/127.5-1, raw 0..255, "
                        "standardize (with --mean/--std)")
    g.add_argument("--mean", type=_floats, help="subtracted after scaling; one value or one "
                   "per channel, comma-separated")
    g.add_argument("--std", type=_floats, help="divided by after --mean; like --mean")
    g.add_argument("--vocabulary", help="text models: the token list (JSON or one per line; "
                   "the first token has id 2)")
    g.add_argument("--ngrams", type=int, help="text models: word n-grams of the tokenizer")
    s.add_argument("--artifacts", default=str(default_root()),
                   help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("datasets", help="show which datasets are available and from where")
    s.add_argument("names", nargs="*", help=f"datasets (default: all of {', '.join(data.DATASETS)})")
    s.add_argument("--data-dir", help="folder with full datasets (default: $DATA_DIR)")
    s.set_defaults(func=_cmd_datasets)

    s = sub.add_parser("download", help="fill the Keras cache from the internet")
    s.add_argument("name", choices=[n for n, spec in data.DATASETS.items() if spec.download])
    s.set_defaults(func=_cmd_download)

    s = sub.add_parser("make-samples", help="cut data/samples from full .npz files")
    s.add_argument("--from", dest="source", required=True, help="folder with the full .npz files")
    s.set_defaults(func=_cmd_make_samples)

    s = sub.add_parser("models", help="list the model zoo")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("train", help="train one model into an artifact variant")
    s.add_argument("--model", required=True, help="model-zoo name (`python -m trainer models`)")
    s.add_argument("--task", help="task (default: the model's own task)")
    s.add_argument("--recipe", help="JSON file with recipe values (only the differences)")
    g = s.add_argument_group("your own data (creates or updates the task --task)")
    g.add_argument("--data", help="image folder (one subfolder per class), text folder, CSV "
                   "with a label column, or .npz (x_train, y_train, x_test, y_test)")
    g.add_argument("--image-size", type=_image_size, help="HxW or HxWxC every image is converted "
                   "to (default: the first image's size and colour)")
    g.add_argument("--labels", help="class names in order (a JSON list or one per line)")
    g.add_argument("--label-column", default="label", help="CSV label column (default: label)")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="test share when the data has no train/test split (default 0.2)")
    s.add_argument("--variant", help="variant name (default: the model name)")
    _add_common(s)
    _add_recipe_flags(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("train-all", help="train the served tasks' models and the MobileNetV2 "
                                         "transfer pair (what `make train` runs)")
    s.add_argument("--with-lecture", action="store_true",
                   help="also XOR and MNIST models (the plan 'lecture')")
    s.add_argument("--plan", choices=sorted(PLANS),
                   help="which jobs (trainer/plan.py): 'served' (default), 'lecture' (+ XOR and "
                        "MNIST), 'full' (default with --data-dir: + the stronger Fashion CNN "
                        "and MobileNetV3-Small / EfficientNet-B0 on Fashion and Sign, 48 px)")
    s.add_argument("--only", nargs="*", help="only these jobs (task/variant or model names)")
    s.add_argument("--jobs", type=int, default=1,
                   help="jobs trained at once, each in its own process (default 1)")
    s.add_argument("--retrain", action="store_true",
                   help="train every job again, even one whose variant is up to date (same "
                        "recipe, data and trainer/core code)")
    _add_common(s)
    s.set_defaults(func=_cmd_train_all)

    from trainer.search import DEFAULT_PARAMS, SAMPLERS, SEARCH_SPACE

    s = sub.add_parser("search", help="hyperparameter search with Optuna (resumable)")
    s.add_argument("--model", required=True, help="model-zoo name")
    s.add_argument("--task", help="task (default: the model's own task)")
    s.add_argument("--sampler", default="tpe", choices=SAMPLERS,
                   help="grid, random or tpe (Bayesian); default tpe")
    s.add_argument("--trials", type=int, default=10,
                   help="finished trials the study should hold (a rerun resumes to this count)")
    s.add_argument("--params", nargs="*", choices=list(SEARCH_SPACE),
                   help=f"what to search (default: {' '.join(DEFAULT_PARAMS)})")
    s.add_argument("--out", default="search", help="folder for search.db, results.*, "
                                                   "best_recipe.json (default: search)")
    s.add_argument("--storage", help="Optuna storage URL shared by several machines "
                                     "(default: sqlite:///<out>/search.db)")
    s.add_argument("--study", help="study name (default: <task>-<model>)")
    _add_common(s)
    _add_recipe_flags(s)
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("ensemble", help="average or vote several trained variants of a task")
    s.add_argument("--task", required=True)
    s.add_argument("--members", nargs="+", required=True, help="variant names of the task")
    s.add_argument("--method", default="average", help="average (soft) or vote (hard)")
    s.add_argument("--variant", help="name (default: ensemble-<method>-<members>)")
    _add_common(s)
    s.set_defaults(func=_cmd_ensemble)
    return p


def _add_common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data-dir", help="folder with full datasets (default: $DATA_DIR, else the "
                                      "bundled samples)")
    s.add_argument("--artifacts", default=str(default_root()),
                   help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")


def _check_task(name: str) -> str:
    try:
        get_task(name)
    except ValueError as e:  # core.tasks reports unknown tasks as a plain ValueError
        raise TrainerInputError(str(e)) from None
    return name


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "artifacts", None):
        from core.userdata import register_tasks

        register_tasks(args.artifacts)  # the user's own tasks, beside the built-in ones
    try:
        return args.func(args)
    except (TrainerInputError, data.DatasetNotFoundError, data.DatasetFormatError,
            ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
