"""What `python -m trainer train-all` (`make train`) trains, in order.

The served tasks' models first (compress derives its variants from them), then the transfer
pair: MobileNetV2 pretrained on Fashion-MNIST by this project, fine-tuned on Sign-Language in
two phases. (The comparison with the same model trained from scratch doubles that job's time:
`python -m trainer train ... --compare-scratch` runs it, see trainer/README.md.) `--with-lecture` adds the
remaining lecture models (XOR, MNIST). With full data (`--data-dir`/`DATA_DIR`) train-all runs
the plan `full` instead (FULL_DATA_JOBS below): the models of the committed full-data record.
Recipes are the models' registered defaults; only what differs is listed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainJob:
    task: str
    model: str
    overrides: dict = field(default_factory=dict)
    variant: str | None = None   # default: the model name

    @property
    def name(self) -> str:
        return f"{self.task}/{self.variant or self.model}"


SERVED_JOBS = (
    TrainJob("fashion_mnist", "fashion_mlp"),
    TrainJob("fashion_mnist", "fashion_cnn"),
    TrainJob("sign_mnist", "sign_cnn"),
    TrainJob("sign_mnist", "sign_mlp"),
    TrainJob("imdb", "imdb_gap"),
    TrainJob("imdb", "imdb_bigram"),
    # Transfer: the Fashion-MNIST backbone is the checkpoint the Sign-Language model starts from.
    TrainJob("fashion_mnist", "mobilenet_v2", {"epochs": 8}),
    TrainJob("sign_mnist", "mobilenet_v2",
             {"pretrained": "fashion_mnist/mobilenet_v2", "head_epochs": 2, "epochs": 8,
              "fine_tune_layers": 200, "fine_tune_lr_factor": 0.3}),
)

LECTURE_JOBS = (
    TrainJob("xor", "xor_mlp"),
    TrainJob("mnist", "mnist_cnn"),
    TrainJob("mnist", "mnist_dnn"),
)


def _transfer_pair(model: str, fashion_epochs: int, sign_epochs: int) -> tuple[TrainJob, ...]:
    """A keras.applications backbone trained here (no ImageNet weights offline): from scratch
    on Fashion-MNIST, then fine-tuned on Sign-Language in two phases (1 head epoch, then every
    backbone layer with BatchNorm frozen). 48 px: at 32 px the five stride-2 stages leave a 1x1
    map, and the backbone is pretrained at the resolution it is fine-tuned at."""
    return (
        TrainJob("fashion_mnist", model, {"resolution": 48, "epochs": fashion_epochs}),
        TrainJob("sign_mnist", model,
                 {"resolution": 48, "pretrained": f"fashion_mnist/{model}", "head_epochs": 1,
                  "epochs": sign_epochs, "early_stopping_patience": 4,
                  "fine_tune_layers": 1000, "fine_tune_lr_factor": 1.0}),
    )


# `DATA_DIR=... make all` (train-all with --data-dir): the full-data record's models, every
# lecture model, the served tasks' models, the stronger Fashion CNN, and the three
# keras.applications families on Fashion and Sign. Applications jobs first: they are the
# longest and the transfers wait for them.
FULL_DATA_JOBS = (
    _transfer_pair("mobilenet_v2", 4, 12)
    + _transfer_pair("mobilenet_v3_small", 4, 12)
    + _transfer_pair("efficientnet_b0", 4, 12)
    + (TrainJob("fashion_mnist", "fashion_cnn3"),)
    + tuple(j for j in SERVED_JOBS if j.model not in ("mobilenet_v2",))
    + LECTURE_JOBS
)

# train-all's `--plan`: which jobs; "full" is the default when --data-dir is given.
PLANS = {
    "served": SERVED_JOBS,
    "lecture": SERVED_JOBS + LECTURE_JOBS,
    "full": FULL_DATA_JOBS,
}


@dataclass(frozen=True)
class JobResult:
    name: str
    test_accuracy: float
    seconds: float
    kept: bool          # up to date: not trained again


def run_job(job: TrainJob, data_dir=None, artifacts=None, retrain: bool = False) -> JobResult:
    """Train one job, or keep its variant when training would repeat the same run."""
    import time

    from trainer.train import train_variant, up_to_date_variant

    start = time.perf_counter()
    kwargs = dict(overrides=dict(job.overrides), data_dir=data_dir, artifacts=artifacts,
                  variant=job.variant)
    variant = None if retrain else up_to_date_variant(job.task, job.model, **kwargs)
    kept = variant is not None
    if kept:
        print(f"[trainer] {job.name}: unchanged (same recipe, data and code), kept {variant.path}",
              flush=True)
    else:
        variant = train_variant(job.task, job.model, **kwargs)
    return JobResult(job.name, variant.metrics["test_accuracy"], time.perf_counter() - start, kept)


def dependencies(jobs) -> dict[str, set[str]]:
    """job name -> the jobs it starts from (a transfer's `pretrained` source)."""
    names = {j.name for j in jobs}
    return {j.name: {j.overrides["pretrained"]} & names if j.overrides.get("pretrained")
            else set() for j in jobs}


def run_jobs(jobs, workers: int = 1, **kwargs) -> list[JobResult]:
    """Run `jobs`, `workers` at a time in separate processes (1: in this process, in order).

    A job starts once the jobs it depends on are done; jobs that others wait for start first,
    so the transfer chain overlaps with the small models. Every job seeds itself, so its
    result does not depend on which process runs it or what ran there before.
    """
    if workers <= 1:
        return [run_job(job, **kwargs) for job in jobs]
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    deps = dependencies(jobs)
    needed_by = {name for wanted in deps.values() for name in wanted}
    pending = sorted(jobs, key=lambda j: j.name not in needed_by)  # stable: plan order within
    done: dict[str, JobResult] = {}
    running = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            for job in [j for j in pending if deps[j.name] <= set(done)][:workers - len(running)]:
                pending.remove(job)
                running[pool.submit(run_job, job, **kwargs)] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                done[job.name] = future.result()
    return [done[j.name] for j in jobs]
