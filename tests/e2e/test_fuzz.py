"""Schemathesis against a running server's ``/openapi.json``: every operation gets a bounded
number of generated cases, valid and invalid; no 5xx, only documented statuses, and every
response matches its documented content type and schema."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

from tests.e2e.conftest import Server, running_ptserve
from tests.guards import REQUEST_S, hang_guard

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Per operation and mode. Derandomized, so every run sends the same cases.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_ptserve([], tmp_path_factory.mktemp("fuzz") / "log") as server:
        yield server


def fuzz(server: Server, mode: GenerationMode) -> list[str]:
    """Fuzz every operation in the server's schema; one failure report per failing operation."""
    schema = schemathesis.openapi.from_url(
        f"{server.base_url}/openapi.json",
        config=schemathesis.Config(),
        timeout=hang_guard(REQUEST_S),
    )
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    failures: list[str] = []
    with requests.Session() as session:
        for operation in (op for methods in schema.values() for op in methods.values()):

            @SETTINGS
            @given(operation.as_strategy(mode))
            def send(case: Case[Any]) -> None:
                case.call_and_validate(
                    server.base_url, session, checks=checks, timeout=hang_guard(REQUEST_S)
                )

            try:
                send()
            except FailureGroup as exc:  # its message holds the request (as curl) and response
                failures.append(f"{operation.label}:\n{exc}")
            except Unsatisfiable:  # nothing here can be made invalid: no body, free-form strings
                if mode is GenerationMode.POSITIVE:
                    raise
            except requests.RequestException as exc:  # a crash or a hang; the notes name the case
                notes = "\n".join(getattr(exc, "__notes__", []))
                failures.append(f"{operation.label}: {exc!r}\n{notes}")
                break
    if server.process.poll() is not None:
        failures.append(f"the server died:\n{server.log()}")
    return failures


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_every_operation_conforms(server: Server, mode: GenerationMode) -> None:
    failures = fuzz(server, mode)
    assert not failures, "\n\n".join(failures)


def test_every_operation_conforms_without_an_api_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("fuzz-key\n")
    with running_ptserve(["--api-key-file", str(keys)], tmp_path / "log") as keyed:
        failures = fuzz(keyed, GenerationMode.POSITIVE)
    assert not failures, "\n\n".join(failures)
