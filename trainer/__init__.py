"""trainer: the model zoo, training recipes, transfer learning, ensembles and search.

Import-light on purpose: nothing here imports TensorFlow at package import time. Modules that
need TensorFlow get it from `core.tf_setup`; datasets, preprocessing and the artifact contract
live in `core`.
"""
