"""train-all's plans (trainer/plan.py): every job names a registered model with a valid recipe,
transfers start from a job of the same plan, and the full-data plan trains every model the
full-data record lists."""
from __future__ import annotations

import pytest

from trainer.models.registry import get_model
from trainer.plan import PLANS, dependencies
from trainer.recipe import resolve_recipe


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_job_resolves_and_depends_only_on_its_own_plan(plan):
    jobs = PLANS[plan]
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)), "a job name twice: the second would overwrite the first"
    for job in jobs:
        resolve_recipe(get_model(job.model).defaults, None, dict(job.overrides))  # raises if bad
        source = job.overrides.get("pretrained")
        if source:
            assert source in names, f"{job.name} starts from {source}, which {plan} does not train"
    assert all(deps <= set(names) for deps in dependencies(jobs).values())


def test_the_full_plan_trains_every_model_of_the_full_data_record():
    full = {(j.task, j.model) for j in PLANS["full"]}
    lecture = {("xor", "xor_mlp"), ("mnist", "mnist_cnn"), ("mnist", "mnist_dnn"),
               ("fashion_mnist", "fashion_mlp"), ("sign_mnist", "sign_mlp"), ("imdb", "imdb_gap")}
    served = {("fashion_mnist", "fashion_cnn"), ("sign_mnist", "sign_cnn"), ("imdb", "imdb_bigram")}
    applications = {(task, model) for task in ("fashion_mnist", "sign_mnist")
                    for model in ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")}
    assert lecture | served | applications <= full
    # The Sign-Language backbones are fine-tuned from this project's Fashion-MNIST ones.
    for job in PLANS["full"]:
        if job.task == "sign_mnist" and (job.task, job.model) in applications:
            assert job.overrides["pretrained"] == f"fashion_mnist/{job.model}"
