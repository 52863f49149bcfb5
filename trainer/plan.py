"""What `python -m trainer train-all` (`make train`) trains, in order.

The served tasks' models first (compress derives its variants from them), then the transfer
pair: MobileNetV2 pretrained on Fashion-MNIST by this project, fine-tuned on Sign-Language in
two phases. (The comparison with the same model trained from scratch doubles that job's time:
`python -m trainer train ... --compare-scratch` runs it, see trainer/README.md.) `--with-lecture` adds the
remaining lecture models (XOR, MNIST). Recipes are the models' registered defaults; only what
differs is listed here.
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
