"""Fuzz every route in-process from the server's own OpenAPI schema (schemathesis): no input gives a 5xx.

Bounded: 25 generated requests per operation against the tiny model, with small server limits so each
generation is a handful of tokens. schemathesis starts the app's lifespan once and keeps it for the module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.conftest import build_tiny_llama  # noqa: E402
from tuneloop.serve.app import build_app  # noqa: E402
from tuneloop.serve.engine import LocalEngine  # noqa: E402
from tuneloop.serve.settings import ServeSettings  # noqa: E402


def _app(tmp: Path):
    # The schema is read at import (parametrize needs it), so the app is built here, not in a fixture.
    model = build_tiny_llama(tmp / "tiny-fuzz")
    limits = ServeSettings(max_batch=4, max_tokens=4, max_prompt_tokens=128, max_inputs=4, max_body_bytes=20_000,
                           log_db=str(tmp / "fuzz.db"), adapter_roots=[str(tmp / "adapters")])
    return build_app(LocalEngine(str(model), "tiny"), limits)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(Path(tempfile.mkdtemp(prefix="tuneloop-fuzz-"))))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error])


def teardown_module(module):
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()
