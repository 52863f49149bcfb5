"""trainer: datasets, model zoo, training recipes and search.

Import-light on purpose: nothing here imports TensorFlow at package import time. The
TensorFlow-free modules (`tasks`, `data`, `preprocessing`, `artifacts`) are shared with
`serve` and `benchmarks`, which must run where only onnxruntime and numpy are installed.
Modules that need TensorFlow get it from `trainer.tf_setup`.
"""
