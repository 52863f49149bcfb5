"""Task definitions: what each dataset's inputs and labels are.

One frozen spec per task, so that training, compression, benchmarks and serving read the
same facts (input kind, label names) instead of restating them. The built-in tasks are the
table below; users' own tasks are added to it by `core.userdata.register_tasks(artifacts)`
from the records `python -m trainer import` writes. TensorFlow-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

FASHION_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Sign-Language MNIST (Kaggle) labels are 0..24 for A..Y; 9 (J) and 25 (Z) need motion and
# never occur. We keep 24 contiguous classes 0..23 and map the raw labels explicitly.
SIGN_LETTERS = tuple("ABCDEFGHIKLMNOPQRSTUVWXY")
SIGN_RAW_LABELS = tuple(i for i in range(25) if i != 9)  # raw Kaggle label of class k
DIGIT_LABELS = tuple(str(d) for d in range(10))
SENTIMENT_LABELS = ("negative", "positive")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str
    kind: str  # "image" (uint8 pixels), "text" (raw strings) or "vector"
    labels: tuple[str, ...]
    description: str
    served: bool = False
    # A user task's files (core.userdata.DataSource as a dict); None for a built-in task.
    source: Mapping | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("fashion_mnist", "fashion_mnist", "image", FASHION_LABELS,
                 "Zalando Fashion-MNIST clothing, 28x28 grayscale, 10 classes", served=True),
        TaskSpec("sign_mnist", "sign_mnist", "image", SIGN_LETTERS,
                 "Sign-Language MNIST ASL letters A..Y without J, 28x28 grayscale, 24 classes",
                 served=True),
        TaskSpec("imdb", "imdb", "text", SENTIMENT_LABELS,
                 "IMDB movie review sentiment (Maas et al. 2011), raw text, 2 classes", served=True),
        TaskSpec("mnist", "mnist", "image", DIGIT_LABELS, "MNIST digits, 28x28 grayscale"),
        TaskSpec("xor", "xor", "vector", ("0", "1"), "XOR truth table, 2 inputs, 1 output"),
    )
}

# The built-in served tasks; core.userdata.served_tasks(root) adds a root's imported ones.
SERVED_TASKS = tuple(t.name for t in TASKS.values() if t.served)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} (and the tasks "
            f"imported into the artifact root: python -m trainer import)"
        ) from None
