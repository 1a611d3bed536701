"""Schemathesis against the live gateway: every operation of the schema it serves at /openapi.json, fuzzed under
uvicorn in front of the fake upstream with an app key (and the admin-only ones again with an admin key), must
answer no 5xx and only documented statuses, content types and bodies.

Generation is derandomized and runs without Hypothesis's example database, so a run is the same on every machine.
`model` in the bodies is bound, most of the time, to the served `fake` model (else the fuzzing would stop at the
404 for an unknown model), `response_id` / `interaction_id` often to a real interaction (else the feedback and
interaction routes would only ever answer 404), and a few strings to ones with a NUL character, which a short
random run seldom generates.

The schema is loaded in a fixture, from the running gateway, and each operation is driven with its Hypothesis
strategy (`APIOperation.as_strategy`): schemathesis's own lazy pytest loader (`schemathesis.pytest.from_fixture`)
sets `request.node._nodeid`, which pytest 9.2's nodes do not have.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.openapi import from_url
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway_helpers import RunningGateway, running_gateway

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40  # per operation and generation mode: twice as many cases, positive and negative mixed
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("POST", "/v1/feedback"),
    ("GET", "/v1/interactions/{interaction_id}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]
ADMIN_OPERATIONS = [("GET", "/v1/interactions/{interaction_id}"), ("GET", "/metrics")]
# Valid strings that random generation reaches too rarely for a run this short: PostgreSQL's text refuses NUL.
HOSTILE_STRINGS = ["nul\x00inside", "\x00"]


@pytest.fixture
def gateway(upstream_url, any_db_url, tmp_path):
    with running_gateway(any_db_url, tmp_path, {"fake": [upstream_url]}) as gw:
        yield gw


@pytest.fixture
def served_ids(gateway) -> list[str]:
    """The response id and the request id of one answered chat completion, made with the app key."""
    response = httpx.post(
        gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.app_key}"},
        json={"model": "fake", "messages": [{"role": "user", "content": "hello"}]}, timeout=30,
    )
    assert response.status_code == 200, response.text
    return [response.json()["id"], response.headers["x-request-id"]]


def live_schema(gateway: RunningGateway, served_ids: list[str], key: str) -> BaseSchema:
    config = SchemathesisConfig.from_dict({
        "headers": {"Authorization": f"Bearer {key}"},
        # a failure must show what was sent: the keys are this test's own, and `max_tokens` is no secret
        "output": {"sanitization": {"enabled": False}},
        "dictionaries": {
            "models": {"values": ["fake"]},
            "ids": {"values": [*served_ids, *HOSTILE_STRINGS]},
            "hostile": {"values": HOSTILE_STRINGS},
        },
        "parameters": {
            "body.model": {"dictionary": "models", "probability": 0.8},
            "body.response_id": {"dictionary": "ids", "probability": 0.5},
            "path.interaction_id": {"dictionary": "ids", "probability": 0.5},
            **{f"body.{name}": {"dictionary": "hostile", "probability": 0.2}
               for name in ("user", "comment", "correction")},
        },
    })
    return from_url(gateway.url + "/openapi.json", config=config)


def fuzz(schema: BaseSchema, method: str, path: str) -> None:
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=2 * MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=cases)
    def call_and_validate(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(checks=CHECKS, timeout=30)

    call_and_validate()


def test_every_documented_operation_is_fuzzed(gateway, served_ids):
    schema = live_schema(gateway, served_ids, gateway.app_key)
    documented = {(result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_with_an_app_key(gateway, served_ids, method, path):
    fuzz(live_schema(gateway, served_ids, gateway.app_key), method, path)


@pytest.mark.parametrize(("method", "path"), ADMIN_OPERATIONS)
def test_admin_operation_with_an_admin_key(gateway, served_ids, method, path):
    fuzz(live_schema(gateway, served_ids, gateway.admin_key), method, path)
