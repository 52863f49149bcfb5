"""Errors of the compress package. All are ValueErrors about user input (a recipe, a model,
a parameter): the message names the object, what is supported and how to fix it."""
from __future__ import annotations


class CompressError(ValueError):
    """A compression request that cannot be carried out as asked."""


class UnknownTechniqueError(CompressError):
    """A recipe names a technique that does not exist."""


class InvalidParameterError(CompressError):
    """A technique parameter is out of range or of the wrong type."""


class UnsupportedLayerError(CompressError):
    """A layer a technique was asked to transform cannot be transformed."""


class NotApplicableError(CompressError):
    """The technique finds nothing to do on this model (e.g. no Conv2D to make separable).

    The pipeline records such a step as skipped instead of failing the run."""
