"""The model zoo: `create_model(name, inputs, options)`, `list_models()`, `get_model(name)`.

TensorFlow-free at import: builders import Keras when they run, so listing the zoo (for
`--help`, recipe validation and error messages) costs nothing. Registering a model (the
`@register_model` decorator in one of the family files) puts it under the registry tests.
"""
from trainer.models.registry import (  # noqa: F401
    ModelInputs, ModelOptions, ModelSpec, UnknownModelError, create_model, get_model,
    list_models, register_model,
)
