"""What the routes and the error boundary answer with: orjson bytes as `application/json`,
and the server's name and version (V2 server metadata, the OpenAPI document)."""
from __future__ import annotations

import orjson
from fastapi.responses import Response

SERVER_NAME = "tinyship"
SERVER_VERSION = "0.1.0"
JSON = "application/json"


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)
