"""One module per protocol; each builds its own `APIRouter` from the app's shared state.

A protocol module exposes `router(...) -> APIRouter`, taking what its routes need (the
`ModelRepository`, the `ServerMetrics`); `serve.app.create_app` adds each router with one
`_include` line.
Routes only pick the model, hand the body to `serve.dataplane` and return bytes; they raise
`serve.errors` errors, which `serve.boundary` turns into JSON answers.

The routes close over that state instead of reading it per request (FastAPI's "bigger
applications" layout uses module-level routers with `Depends(...)` or `request.app.state`):
a closure costs nothing per request, while dependency resolution costs more than some models,
and a router built per app keeps several apps in one process (the tests) apart.
"""
