"""Every format, served by the real CLI, answers like the model does in-process."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.artefacts import Artefact
from tests.e2e.conftest import Server, running_ptserve, settings_flags
from tests.guards import REQUEST_S, hang_guard

FORMATS = ["pickle", "state_dict", "safetensors", "torchscript", "export"]
CONCURRENT_REQUESTS = 20


@pytest.fixture(scope="module", params=FORMATS)
def served(
    request: pytest.FixtureRequest,
    artefacts: dict[str, Artefact],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Artefact, str]]:
    """One server per format, shared by that format's tests."""
    fmt: str = request.param
    artefact = artefacts[fmt]
    log = tmp_path_factory.mktemp(fmt) / "server.log"
    with running_ptserve([str(artefact.path), *settings_flags(artefact.settings)], log) as server:
        yield server, artefact, fmt


def predictions(client: httpx.Client, path: str, inputs: np.ndarray[Any, Any]) -> Any:
    response = client.post(path, json={"instances": inputs.tolist()})
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_matches_in_process_outputs(served: tuple[Server, Artefact, str]) -> None:
    server, artefact, _ = served
    with httpx.Client(base_url=server.base_url, timeout=hang_guard(REQUEST_S)) as client:
        body = predictions(client, "/predict", artefact.inputs)
    assert body["model"] == artefact.path.stem
    assert np.allclose(np.array(body["predictions"]), artefact.expected, atol=1e-5)


def test_kserve_v1_predict_matches(served: tuple[Server, Artefact, str]) -> None:
    server, artefact, _ = served
    path = f"/v1/models/{artefact.path.stem}:predict"
    with httpx.Client(base_url=server.base_url, timeout=hang_guard(REQUEST_S)) as client:
        body = predictions(client, path, artefact.inputs)
    assert np.allclose(np.array(body["predictions"]), artefact.expected, atol=1e-5)


def test_concurrent_requests_share_one_load(served: tuple[Server, Artefact, str]) -> None:
    server, artefact, fmt = served
    rows = [artefact.inputs[i % len(artefact.inputs)] for i in range(CONCURRENT_REQUESTS)]

    def predict_one(row: np.ndarray[Any, Any]) -> Any:
        with httpx.Client(base_url=server.base_url, timeout=hang_guard(REQUEST_S)) as client:
            return predictions(client, "/predict", row[np.newaxis])["predictions"][0]

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        answers = list(pool.map(predict_one, rows))
    expected = [artefact.expected[i % len(artefact.expected)] for i in range(len(rows))]
    assert np.allclose(np.array(answers), np.array(expected), atol=1e-5)

    meta = httpx.get(
        f"{server.base_url}/models/{artefact.path.stem}", timeout=hang_guard(REQUEST_S)
    ).json()
    assert meta["format"] == fmt
    assert meta["loads"] == 1
    assert Path(meta["file"]).name == artefact.path.name
