"""Hyperparameter search with Optuna: grid, random and Bayesian (TPE) samplers over learning
rate, batch size, optimizer, dropout and width (and, when named, normalization and activation),
with trials pruned on validation accuracy.

Studies live in an Optuna storage: by default a SQLite file in the output folder, so an
interrupted search resumes where it stopped (run the same command again); any storage URL
(e.g. postgresql://...) lets several processes or machines search one study: each tags its
trials with host:pid, and all stop once the study holds the requested number of trials (give
each process its own --seed: samplers seeded alike propose the same values). Each run writes
`results.csv`, `results.md` (one row per trial) and `best_recipe.json` (only the values that
differ from the model's defaults; pass it to `python -m trainer train --recipe`).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from trainer.errors import TrainerInputError
from trainer.recipe import ACTIVATIONS, NORMALIZATIONS, RecipeError, expand_aliases



@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    grid: tuple[float, ...]   # the values the grid sampler tries
    log: bool = False

    def suggest(self, trial, name):
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Choice:
    values: tuple

    @property
    def grid(self):
        return self.values

    def suggest(self, trial, name):
        return trial.suggest_categorical(name, self.values)


SEARCH_SPACE = {
    "learning_rate": FloatRange(1e-4, 1e-2, grid=(3e-4, 1e-3, 3e-3), log=True),
    "batch_size": Choice((32, 64, 128)),
    "optimizer": Choice(("adam", "rmsprop", "nesterov")),
    "dropout": FloatRange(0.0, 0.5, grid=(0.0, 0.3)),
    "width": Choice((0.5, 1.0, 2.0)),
    # Searched only when named (--params): keras.applications backbones refuse them.
    "normalization": Choice(NORMALIZATIONS),
    "activation": Choice(tuple(a for a in ACTIVATIONS if a != "default")),
}
# What a search covers when no params are named.
DEFAULT_PARAMS = ("learning_rate", "batch_size", "optimizer", "dropout", "width")


class SearchError(TrainerInputError):
    """A search request that cannot run; the message lists the valid choices."""


# sampler name -> Optuna sampler, from (searched parameters, seed).
SAMPLER_FACTORIES = {
    "grid": lambda params, seed: optuna.samplers.GridSampler(
        {p: list(SEARCH_SPACE[p].grid) for p in params}, seed=seed),
    "random": lambda params, seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe": lambda params, seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
}


SAMPLERS = tuple(SAMPLER_FACTORIES)


def make_sampler(name: str, params: tuple[str, ...], seed: int):
    if name not in SAMPLER_FACTORIES:
        raise SearchError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_FACTORIES)}")
    return SAMPLER_FACTORIES[name](params, seed)


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'search.db').resolve()}"


def open_storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Connect to an Optuna RDB storage (SQLite file, PostgreSQL, MySQL: any SQLAlchemy URL).

    Processes that start together on an empty database race to create Optuna's tables; the
    loser sees the winner's half-made schema as an integrity or duplicate-table error, and
    connecting again finds the tables complete."""
    import sqlalchemy.exc

    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise SearchError(f"--storage {url!r} is not a database URL; expected e.g. "
                          f"sqlite:///search.db or postgresql://user:password@host:5432/db") from None
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.NoSuchModuleError,
                ImportError) as e:  # server unreachable or refusing; no such dialect or driver
            reason = str(e).strip().splitlines()[0]
            raise SearchError(f"cannot open the Optuna storage {shown}: {reason}") from None


def record_worker(objective):
    """Tag each trial with the process that runs it (host:pid), so a study shared by several
    processes shows which one ran what (results.csv's worker column)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def tagged(trial):
        trial.set_user_attr("worker", worker)
        return objective(trial)

    return tagged


class PruneOnValidation:
    """Keras callback factory: report the monitored metric each epoch; stop unpromising trials."""

    @staticmethod
    def callback(trial, monitor: str):
        from core.tf_setup import keras

        def on_epoch_end(epoch, logs):
            value = (logs or {}).get(monitor)
            if value is None:
                return
            trial.report(float(value), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch + 1}: {monitor} {value:.4f}")

        return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def run_search(task: str, model: str, *, sampler: str = "tpe", n_trials: int = 10,
               out_dir: str | Path = "search", storage: str | None = None,
               study_name: str | None = None, overrides: dict | None = None,
               params: tuple[str, ...] = DEFAULT_PARAMS, data_dir=None,
               pruner=None, seed: int = 0) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished ones (resuming if it exists)."""
    from trainer.fit import build_model, fit, prepare_data, seed_everything
    from trainer.train import resolved_recipe

    unknown = [p for p in params if p not in SEARCH_SPACE]
    if unknown:
        raise SearchError(f"cannot search {unknown}; searchable: {', '.join(SEARCH_SPACE)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = expand_aliases(dict(overrides or {}))
    base_recipe = resolved_recipe(model, overrides=base)
    if not base_recipe.validation_split:
        raise RecipeError("a search ranks trials on validation accuracy: set validation_split > 0")
    data = prepare_data(task, base_recipe, data_dir)
    study = optuna.create_study(
        study_name=study_name or f"{task}-{model}",
        storage=open_storage(storage or default_storage(out_dir)),
        sampler=make_sampler(sampler, tuple(params), seed), direction="maximize",
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        load_if_exists=True)
    study.set_user_attr("task", task)
    study.set_user_attr("model", model)

    def objective(trial):
        values = {p: SEARCH_SPACE[p].suggest(trial, p) for p in params}
        recipe = base_recipe.replace(**values)
        seed_everything(recipe)
        keras_model = build_model(model, data, recipe)
        history = fit(keras_model, data, recipe, verbose=0,
                      extra_callbacks=[PruneOnValidation.callback(trial, "val_accuracy")])
        return max(history["val_accuracy"])

    done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for t in study.trials)
    remaining = max(0, n_trials - done)
    print(f"[search] study {study.study_name!r}: {done} trials done, running {remaining} more "
          f"({sampler} sampler)", flush=True)
    if remaining:
        # Other processes may share the study: stop once it holds n_trials finished ones,
        # whoever ran them (a trial in flight elsewhere can add one more).
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        study.optimize(record_worker(objective), n_trials=remaining, catch=(),
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished)])
    write_results(study, out_dir, model, base)
    return study


def write_results(study: optuna.Study, out_dir: Path, model: str, base_overrides: dict) -> None:
    from trainer.models import get_model

    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"trial": t.number, "state": t.state.name,
                     "val_accuracy": None if t.value is None else round(t.value, 4),
                     "epochs": len(t.intermediate_values), "seconds": seconds and round(seconds, 1),
                     "worker": t.user_attrs.get("worker"), **t.params})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    ranked = sorted(rows, key=lambda r: -(r["val_accuracy"] or -1))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in columns) + " |"
              for r in ranked]
    (out_dir / "results.md").write_text(
        f"# Search {study.study_name} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
        + "\n".join(lines) + "\n")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        defaults = dict(get_model(model).defaults)
        best = {**base_overrides, **study.best_params}
        differences = {k: v for k, v in best.items() if defaults.get(k) != v}
        (out_dir / "best_recipe.json").write_text(json.dumps(differences, indent=2) + "\n")
        print(f"[search] best trial #{study.best_trial.number}: val_accuracy "
              f"{study.best_value:.4f} with {study.best_params} -> {out_dir / 'best_recipe.json'}")
