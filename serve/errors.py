"""Domain errors of the server, and the one table that maps them to HTTP statuses.

Everything below the routes raises these (never HTTP types); `serve.boundary` turns each into
a JSON answer `{"error": ..., "code": ..., "expected": ...}` with the status from `HTTP_STATUS`.
The `error` key is a string, which is also what the Open Inference Protocol asks for.
"""
from __future__ import annotations


class ServeError(Exception):
    """Base class: `message` says what was wrong, `expected` what would have been accepted."""

    code = "error"

    def __init__(self, message: str, expected: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.headers = headers or {}

    def as_dict(self) -> dict:
        body = {"error": self.message, "code": self.code}
        if self.expected:
            body["expected"] = self.expected
        return body


class InvalidJSON(ServeError):
    code = "invalid_json"


class InvalidInput(ServeError):
    """Well-formed request whose content the model cannot take (shape, dtype, range, ...)."""

    code = "invalid_input"


class InvalidArgument(InvalidInput):
    """Bad input on TensorFlow Serving's REST API, which answers such requests with 400
    (INVALID_ARGUMENT) where the other protocols use 422."""


class NotFound(ServeError):
    code = "not_found"


class UnknownModel(NotFound):
    code = "unknown_model"


class ModelNotReady(ServeError):
    """The model is still loading or failed to load; the message says which and why."""

    code = "model_not_ready"


class Overloaded(ServeError):
    """The model's request queue is full; retry after a short pause."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, expected=f"a retry after {retry_after_s} s (Retry-After)",
                         headers={"Retry-After": str(retry_after_s)})


class BodyTooLarge(ServeError):
    code = "body_too_large"


class TooManyRows(ServeError):
    """More rows in one request than the server takes (Settings.max_request_rows)."""

    code = "too_many_rows"


class Unauthorized(ServeError):
    code = "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, expected="header 'Authorization: Bearer <api key>'",
                         headers={"WWW-Authenticate": "Bearer"})


class InferenceFailed(ServeError):
    """The runtime failed on an input that passed validation: a server-side fault."""

    code = "inference_failed"


HTTP_STATUS: dict[type[ServeError], int] = {
    InvalidJSON: 400,
    InvalidInput: 422,
    InvalidArgument: 400,
    NotFound: 404,
    ModelNotReady: 503,
    Overloaded: 503,
    BodyTooLarge: 413,
    TooManyRows: 413,
    Unauthorized: 401,
    InferenceFailed: 500,
}


def http_status(error: ServeError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
