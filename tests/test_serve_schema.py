"""schemathesis over serve's own /openapi.json, in process (ASGI, fixture models): hundreds of
generated requests, inside and outside the schema, and not one server error."""
from __future__ import annotations

import itertools
import time

import schemathesis  # a dev dependency (pyproject's dev extra): fails loudly when missing

from serve.app import create_app
from serve.fixtures import USER_TASK, write_fixture_artifacts
from serve.settings import Settings


MIN_CASES = 500
# Per operation and generation mode (inside / outside the schema): with random path values,
# and with each served model's name.
EXAMPLES_PER_OPERATION = 30
EXAMPLES_PER_MODEL = 12
MODELS = ("fashion_mnist", "imdb", USER_TASK)


def test_no_generated_request_gets_a_server_error(tmp_path):
    from schemathesis.python import asgi

    artifacts = write_fixture_artifacts(tmp_path, user_task=True)
    app = create_app(Settings(artifacts=artifacts, providers=("cpu",), threads=1))
    with asgi.get_client(app) as client:  # starts the app's lifespan: the models load
        try:
            cases, server_errors = _fuzz(app, client)
        finally:
            asgi.shutdown_lifespans()  # the client keeps the app running until asked
    assert not server_errors, "\n".join(server_errors[:20])
    assert cases >= MIN_CASES, f"only {cases} cases were generated"


def _fuzz(app, client) -> tuple[int, list[str]]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    deadline = time.monotonic() + 60
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "models not ready after 60 s"
        time.sleep(0.05)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    cases, server_errors = 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        params = [p.name for p in operation.path_parameters]
        # Random model names mostly meet the 404 of an unknown model: each model-addressed
        # operation also runs with every served model's name, so bodies and queries reach the
        # decoders and the models. The repository's load/unload would take the models away
        # from the operations after them: random names only.
        names = [None] if not params or "/repository/" in operation.path else [None, *MODELS]
        for name, mode in itertools.product(names, GenerationMode):
            fixed = {p: name for p in params} if name else None
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

            @given(case=strategy)
            @settings(max_examples=EXAMPLES_PER_OPERATION if name is None else EXAMPLES_PER_MODEL,
                      deadline=None, database=None, derandomize=True,
                      phases=(Phase.explicit, Phase.generate),
                      suppress_health_check=list(HealthCheck))
            def call(case):
                nonlocal cases
                response = case.call(session=client)
                cases += 1
                if response.status_code >= 500:
                    server_errors.append(f"{case.method} {case.formatted_path} "
                                         f"query={case.query} headers={case.headers} "
                                         f"body={case.body!r:.300} -> {response.status_code} "
                                         f"{response.text[:300]}")

            try:
                call()
            except Unsatisfiable:
                # No request can fall outside the schema of an operation without parameters
                # or body (GET /v2, say): nothing to generate in the negative mode.
                if mode is GenerationMode.POSITIVE:
                    raise
    return cases, server_errors
