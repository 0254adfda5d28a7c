"""The seed's entry points serve the bundled digits example; ``ptserve info`` describes it."""

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from tests.e2e.conftest import PTSERVE, REPO_ROOT, Server, free_port, run_cli, running
from tests.guards import REQUEST_S, hang_guard

EXAMPLE = REPO_ROOT / "ptserve" / "example" / "digits.pt"
DIGITS = [0, 1, 7, 42, 1000]

# id -> (argv with {port}, extra env, the model name it serves)
ENTRYPOINTS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "uvicorn main:app": (
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", "{port}"],
        {},
        "model",
    ),
    "python main.py": ([sys.executable, "main.py"], {"PTSERVE_PORT": "{port}"}, "model"),
    "ptserve serve": ([*PTSERVE, "serve", "--port", "{port}"], {}, "digits"),
}


@pytest.fixture(scope="module", params=list(ENTRYPOINTS))
def entrypoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    argv, env, name = ENTRYPOINTS[request.param]
    port = str(free_port())
    argv = [arg.replace("{port}", port) for arg in argv]
    env = {key: value.replace("{port}", port) for key, value in env.items()}
    log = tmp_path_factory.mktemp("entrypoint") / "server.log"
    with running(argv, int(port), log, env) as server:
        yield server, name


@pytest.fixture(scope="module")
def digits() -> np.ndarray[Any, Any]:
    data: np.ndarray[Any, Any] = load_digits().data[DIGITS].astype(np.float32)
    return data


@pytest.fixture(scope="module")
def local_outputs(digits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The bundled model's outputs computed in this process (it is our own file)."""
    model = torch.load(EXAMPLE, weights_only=False).eval()
    with torch.no_grad():
        out: np.ndarray[Any, Any] = model(torch.from_numpy(digits)).numpy()
    return out


def test_serves_labelled_digit_predictions(
    entrypoint: tuple[Server, str],
    digits: np.ndarray[Any, Any],
    local_outputs: np.ndarray[Any, Any],
) -> None:
    server, name = entrypoint
    response = httpx.post(
        f"{server.base_url}/predict",
        json={"instances": digits.tolist()},
        timeout=hang_guard(REQUEST_S),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name
    predictions = body["predictions"]
    assert [set(p) for p in predictions] == [{"label", "score", "output"}] * len(DIGITS)
    assert [p["label"] for p in predictions] == [str(i) for i in local_outputs.argmax(axis=1)]
    assert np.allclose([p["output"] for p in predictions], local_outputs, atol=1e-4)
    softmax = torch.softmax(torch.from_numpy(local_outputs), dim=1).max(dim=1).values.numpy()
    assert np.allclose([p["score"] for p in predictions], softmax, atol=1e-5)


def test_info_describes_the_example_without_loading_code() -> None:
    result = run_cli(["info", "model.pt", "--json", "--load"])
    assert result.returncode == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["format"] == "pickle"
    assert facts["sha256"] == hashlib.sha256(Path(REPO_ROOT / "model.pt").read_bytes()).hexdigest()
    assert facts["parameters"] == 4810
    assert facts["outputs"] == ["output: float32 [10] per sample"]
    imports = [entry.split(" ")[0] for entry in facts["imports"]]
    assert "torch.nn.modules.linear.Linear" in imports
    assert all(name.startswith("torch.nn.") for name in imports), imports
