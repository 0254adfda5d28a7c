"""The Ray Serve config ``ptserve ray --print-config`` writes is deployed by Ray's own
``serve run``; redeploying it with more replicas keeps the running one (unit tests check that
Ray's schema accepts every key)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from tests.artefacts import Artefact
from tests.e2e.conftest import child_env, run_cli, settings_flags
from tests.e2e.ray_serve.conftest import DEPLOY_TIMEOUT_S, RayCluster


def printed_config(*args: str) -> str:
    """``ptserve ray ARGS --print-config``, run as a command."""
    result = run_cli(["ray", *args, "--print-config"])
    assert result.returncode == 0, result.output
    assert yaml.safe_load(result.stdout)["applications"]
    return result.stdout


def serve_run(config: Path, address: str) -> None:
    """Ray's own CLI: ``serve run FILE --non-blocking`` submits the config and returns."""
    serve = Path(sys.executable).with_name("serve")
    done = subprocess.run(
        [str(serve), "run", str(config), "--non-blocking", "--address", address],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_serve_run_deploys_the_printed_config_and_scales_it(
    ray_cluster: RayCluster, artefacts: dict[str, Artefact], tmp_path: Path
) -> None:
    import ray

    artefact = artefacts["safetensors"]
    flags = [str(artefact.path), "--name", "tiny", *settings_flags(artefact.settings)]
    address = ray.get_runtime_context().gcs_address
    kept = None
    try:
        for replicas in (1, 2):
            text = printed_config(*flags, "--num-replicas", str(replicas))
            path = tmp_path / f"serve-{replicas}.yaml"
            path.write_text(text)
            serve_run(path, address)
            ray_cluster.wait_running(replicas)
            if kept is None:
                (kept,) = ray_cluster.replica_pids()
        # Only num_replicas changed: Ray added a replica and left the first one running.
        assert kept in ray_cluster.replica_pids()
        with ray_cluster.client() as http:
            response = http.post("/predict", json={"instances": artefact.inputs.tolist()})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            response.json()["predictions"], artefact.expected, rtol=1e-5, atol=1e-6
        )
    finally:
        ray_cluster.delete()
