"""ptserve on Ray Serve, one replica: every endpoint answers through Ray's HTTP proxy, and the
predictions equal the model's run in this process.

The model is the safetensors TinyNet with ``--model-class tests.nets:TinyNet``: the replica
imports the caller's own module and reads the file by an absolute path.
"""

import time

import httpx
import numpy as np
import pytest

from ptserve.client import Client
from ptserve.settings import Settings
from tests.artefacts import Artefact
from tests.e2e.ray_serve.conftest import RayCluster

NAME = "tiny"
HANG_GUARD_S = 120.0


@pytest.fixture(scope="module")
def tiny(ray_cluster: RayCluster, artefacts: dict[str, Artefact]) -> Artefact:
    artefact = artefacts["safetensors"]
    settings = Settings(model_path=artefact.path, name=NAME, **artefact.settings)
    ray_cluster.deploy(settings)
    ray_cluster.wait_running(1)
    return artefact


def assert_one_request_id(response: httpx.Response) -> None:
    assert len(response.headers.get_list("x-request-id")) == 1, response.headers


def test_predict_and_v2_binary_equal_the_model_in_process(
    ray_cluster: RayCluster, tiny: Artefact
) -> None:
    with ray_cluster.client() as http:
        response = http.post("/predict", json={"instances": tiny.inputs.tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == NAME
    predictions = np.array(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(predictions, tiny.expected, rtol=1e-5, atol=1e-6)
    assert_one_request_id(response)
    with Client(ray_cluster.url) as client:  # the binary tensor extension, both ways
        outputs = client.infer(tiny.inputs)
    assert outputs["output"].dtype == np.float32
    np.testing.assert_allclose(outputs["output"], tiny.expected, rtol=1e-5, atol=1e-6)


def test_kserve_v1_and_v2_json_through_the_proxy(ray_cluster: RayCluster, tiny: Artefact) -> None:
    with ray_cluster.client() as http:
        v1 = http.post(f"/v1/models/{NAME}:predict", json={"instances": tiny.inputs.tolist()})
        v2 = http.post(
            f"/v2/models/{NAME}/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(tiny.inputs.shape),
                        "datatype": "FP32",
                        "data": tiny.inputs.ravel().tolist(),
                    }
                ]
            },
        )
        metadata = {path: http.get(path) for path in (f"/v1/models/{NAME}", f"/v2/models/{NAME}")}
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], tiny.expected, rtol=1e-5, atol=1e-6)
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["shape"] == list(tiny.expected.shape)
    np.testing.assert_allclose(
        np.array(output["data"]).reshape(output["shape"]), tiny.expected, rtol=1e-5, atol=1e-6
    )
    for path, response in metadata.items():
        assert response.status_code == 200, path
        assert response.json()["name"] == NAME, path


@pytest.mark.parametrize(
    "path",
    ["/health/live", "/health/ready", "/v2", "/v2/health/live", "/v2/health/ready", "/models"],
)
def test_health_and_metadata_through_the_proxy(
    ray_cluster: RayCluster, tiny: Artefact, path: str
) -> None:
    with ray_cluster.client() as http:
        response = http.get(path)
    assert response.status_code == 200, response.text
    assert_one_request_id(response)


def test_docs_through_the_proxy(ray_cluster: RayCluster, tiny: Artefact) -> None:
    with ray_cluster.client() as http:
        page = http.get("/docs")
        schema = http.get("/openapi.json")
    assert page.status_code == 200
    assert "swagger-ui" in page.text.lower()
    assert schema.status_code == 200
    assert "/predict" in schema.json()["paths"]


def test_metrics_through_the_proxy_are_one_replicas(
    ray_cluster: RayCluster, tiny: Artefact
) -> None:
    with ray_cluster.client() as http:
        http.post("/predict", json={"instances": tiny.inputs[:1].tolist()})
        text = http.get("/metrics").text
    assert 'ptserve_requests_total{method="POST",route="/predict",status="200"}' in text
    assert f'ptserve_batch_size_count{{model="{NAME}",version="1"}}' in text
    replicas = [line for line in text.splitlines() if line.startswith("ptserve_ray_replica{")]
    assert len(replicas) == 1, replicas
    assert 'application="ptserve",deployment="ptserve",replica="' in replicas[0]


def test_ray_metrics_count_each_replicas_requests(ray_cluster: RayCluster, tiny: Artefact) -> None:
    """Ray's own metrics, on each node's metrics port, label Serve's counters by replica: the
    same replica id as ptserve's ptserve_ray_replica."""
    import ray

    (node,) = ray.nodes()
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    with ray_cluster.client() as http:
        http.post("/predict", json={"instances": tiny.inputs[:1].tolist()})
        ours = [
            line
            for line in http.get("/metrics").text.splitlines()
            if "ptserve_ray_replica{" in line
        ]
    replica = ours[0].split('replica="')[1].split('"')[0]
    counter = "ray_serve_deployment_request_counter_total{"
    deadline = time.monotonic() + HANG_GUARD_S  # Ray exports its metrics every few seconds
    while True:
        lines = [line for line in httpx.get(url).text.splitlines() if line.startswith(counter)]
        if any(
            f'replica="{replica}"' in line and 'application="ptserve"' in line for line in lines
        ):
            break
        assert time.monotonic() < deadline, f"no counter of replica {replica} at {url}: {lines}"
        time.sleep(0.5)


def test_errors_keep_their_status_body_and_one_request_id(
    ray_cluster: RayCluster, tiny: Artefact
) -> None:
    with ray_cluster.client() as http:
        short = http.post("/predict", json={"instances": [[1.0, 2.0]]})
        unknown = http.get("/v2/models/nope")
        named = http.get("/health/ready", headers={"X-Request-ID": "ray-test-42"})
    assert short.status_code == 422
    assert short.json()["code"] == "invalid_input"
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "model_not_found"
    for response in (short, unknown, named):
        assert_one_request_id(response)
    assert named.headers["x-request-id"] == "ray-test-42"
