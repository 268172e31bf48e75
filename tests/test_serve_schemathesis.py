"""Property-based API testing against a real server: schemathesis generates requests from /openapi.json
(valid and invalid bodies for every operation) and no answer may be a server error or break its schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from serve_helpers import start_server
from vlmops.serve.keys import KeyStore


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    key = KeyStore(str(tmp / "store.sqlite")).create("schemathesis", rate_per_s=10_000, burst=10_000)
    proc, port = start_server(tmp)
    yield port, key
    proc.terminate()
    proc.wait(30)


def test_no_server_errors_and_schema_conformance(served):
    port, key = served
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        check()
