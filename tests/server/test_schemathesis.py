"""Schemathesis fuzzing of the API from its own OpenAPI document: valid and invalid
requests to every operation; no 5xx, and every answer conforms to the document."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from server import openapi_document
from tests.server.conftest import TOKEN

schemathesis = pytest.importorskip("schemathesis")

schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=list(schemathesis.GenerationMode), max_examples=60, deterministic=True
)


@schema.parametrize()  # type: ignore[untyped-decorator]  # schemathesis is untyped here
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_document(case: Any, live_server: str) -> None:
    response = case.call(base_url=live_server, headers={"Authorization": f"Bearer {TOKEN}"})
    case.validate_response(response)
