"""The error boundary: every exception that leaves a FastAPI route becomes a JSON answer here.

Domain errors (`serve.errors`) carry their status in `HTTP_STATUS`; FastAPI's own errors (bad
query parameters, unknown route or method) get the same `{"error", "code", "expected"}` shape.
The fast path (`serve.fastpath`) answers its errors itself, the same way. Bugs (any other
exception) are answered by `serve.middleware`, around every route: a handler registered here
for `Exception` would run in Starlette's outermost middleware, which re-raises after answering,
and uvicorn then closes the client's connection.
"""
from __future__ import annotations


from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.errors import InvalidInput, ServeError, http_status
from serve.responses import json_response



def error_response(error: ServeError) -> Response:
    return json_response(error.as_dict(), http_status(error), error.headers)


async def serve_error(request: Request, error: ServeError):
    return error_response(error)


async def query_error(request: Request, error: RequestValidationError):
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return error_response(InvalidInput(f"invalid parameter ({problems})",
                                       expected="see /docs for the parameters"))


async def http_error(request: Request, error: StarletteHTTPException):
    expected = "see /docs for the endpoints" if error.status_code in (404, 405) else None
    body = {"error": str(error.detail), "code": f"http_{error.status_code}"}
    if expected:
        body["expected"] = expected
    return json_response(body, error.status_code, error.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, query_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
