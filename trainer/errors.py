"""The base class of every user-input error the trainer raises. TensorFlow-free.

The command line catches it (with the data and artifact errors) and prints the message, which
always names the bad value and lists the valid choices, then exits with status 2."""


class TrainerInputError(ValueError):
    """Bad user input: unknown name, wrong type or value, impossible combination."""
