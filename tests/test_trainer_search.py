"""Optuna search: each sampler runs a few trials, a study resumes from its SQLite file, bad
trials are pruned, and the results table and best recipe are written."""
import json

import optuna
import pytest

from trainer.search import SAMPLERS, SEARCH_SPACE, SearchError, run_search

QUICK = {"max_train_examples": 200, "epochs": 2, "early_stopping_patience": 0}
PARAMS = ("learning_rate", "width")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_runs_trials_and_writes_results(sampler, tmp_path):
    study = run_search("fashion_mnist", "fashion_mlp", sampler=sampler, n_trials=2,
                       out_dir=tmp_path, overrides=QUICK, params=PARAMS)
    assert len(study.trials) == 2
    for trial in study.trials:
        if sampler == "grid":
            assert trial.params["learning_rate"] in SEARCH_SPACE["learning_rate"].grid
        assert trial.params["width"] in SEARCH_SPACE["width"].values
    assert (tmp_path / "search.db").is_file()
    table = (tmp_path / "results.md").read_text()
    assert table.count("| COMPLETE |") + table.count("| PRUNED |") == 2
    best = json.loads((tmp_path / "best_recipe.json").read_text())
    assert best["width"] == study.best_params["width"] and best["epochs"] == 2


def test_search_resumes_from_its_sqlite_file(tmp_path):
    run_search("fashion_mnist", "fashion_mlp", sampler="random", n_trials=2, out_dir=tmp_path,
               overrides=QUICK, params=PARAMS)
    study = run_search("fashion_mnist", "fashion_mlp", sampler="random", n_trials=3,
                       out_dir=tmp_path, overrides=QUICK, params=PARAMS)
    assert [t.number for t in study.trials] == [0, 1, 2]
    reloaded = optuna.load_study(study_name="fashion_mnist-fashion_mlp",
                                 storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert len(reloaded.trials) == 3


def test_trials_are_pruned_on_validation_accuracy(tmp_path):
    # A pruner that prunes anything below 101% accuracy: every trial stops after its first epoch.
    study = run_search("fashion_mnist", "fashion_mlp", sampler="random", n_trials=1,
                       out_dir=tmp_path, overrides=QUICK, params=PARAMS,
                       pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]


def test_unknown_search_parameter_lists_the_searchable_ones(tmp_path):
    with pytest.raises(SearchError, match="searchable: learning_rate, batch_size"):
        run_search("fashion_mnist", "fashion_mlp", out_dir=tmp_path, params=("momentum",))
