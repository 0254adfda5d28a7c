"""A model repository served in-process: several models and versions through every protocol,
their metadata, metrics and OpenAPI, version policies, per-model settings, and start-up."""

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits
from torch import nn

from ptserve.app import create_app
from ptserve.client import AsyncClient
from ptserve.errors import ModelLoadError
from ptserve.settings import Settings
from tests.conftest import serving, serving_app
from tests.repos import (
    add_broken_version,
    add_version,
    copy_labels,
    digits_variant,
    marked_net,
    metric,
    reference,
    tiny_variant,
    v2_outputs,
    v2_request,
    write_config,
)

pytestmark = pytest.mark.anyio
ZEROS = np.zeros((1, 4), np.float32)


def build_two_models(root: Path) -> dict[str, dict[int, nn.Module]]:
    """digits (with labels, every version served, batches of 8) and tiny (a custom class the
    model's settings trust, the 2 latest served), two versions each."""
    models: dict[str, dict[int, nn.Module]] = {
        "digits": {1: digits_variant(0), 2: digits_variant(1)},
        "tiny": {1: tiny_variant(1), 2: tiny_variant(2)},
    }
    for name, versions in models.items():
        for version, net in versions.items():
            add_version(root, name, version, net)
    copy_labels(root, "digits")
    write_config(
        root, "digits", 'labels = "labels.txt"\nversion_policy = "all"\nmax_batch_size = 8\n'
    )
    write_config(root, "tiny", 'trust_modules = ["tests.nets"]\nversion_policy = { latest = 2 }\n')
    return models


async def test_two_models_and_two_versions_answer_through_every_protocol(tmp_path: Path) -> None:
    models = build_two_models(tmp_path)
    inputs = {
        "digits": load_digits().data[:3].astype(np.float32),
        "tiny": np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32),
    }
    async with serving_app(tmp_path, default_model="digits") as (app, client):
        transport = httpx.ASGITransport(app=app)
        for name, versions in models.items():
            x = inputs[name]
            expected = {v: reference(net, x) for v, net in versions.items()}
            assert not np.allclose(expected[1], expected[2], atol=1e-3)  # versions differ
            for version in versions:
                path = f"/v2/models/{name}/versions/{version}/infer"
                answered, outputs = v2_outputs(await client.post(path, json=v2_request(x)))
                assert answered == str(version)
                np.testing.assert_allclose(outputs, expected[version], rtol=1e-5, atol=1e-5)
                async with AsyncClient(
                    "http://ptserve", model=name, version=str(version), transport=transport
                ) as v2_client:  # binary tensors both ways
                    binary = await v2_client.infer(x)
                np.testing.assert_allclose(
                    binary["output"], expected[version], rtol=1e-5, atol=1e-5
                )
            answered, outputs = v2_outputs(
                await client.post(f"/v2/models/{name}/infer", json=v2_request(x))
            )
            assert answered == "2"  # unversioned: the highest served version
            np.testing.assert_allclose(outputs, expected[2], rtol=1e-5, atol=1e-5)
            v1 = await client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
            predictions = v1.json()["predictions"]
            raw = [p["output"] for p in predictions] if name == "digits" else predictions
            np.testing.assert_allclose(np.array(raw), expected[2], rtol=1e-5, atol=1e-5)
        simple = await client.post("/predict", json={"instances": inputs["digits"].tolist()})
        best = reference(models["digits"][2], inputs["digits"]).argmax(axis=1)
        assert [p["label"] for p in simple.json()["predictions"]] == [str(d) for d in best]
        assert simple.json()["model"] == "digits"
        listing = (await client.get("/models")).json()
        one = (await client.get("/models/digits/versions/1")).json()
        latest = (await client.get("/models/tiny")).json()
        v2_meta = (await client.get("/v2/models/tiny")).json()
        metrics = (await client.get("/metrics")).text
    assert [(m["name"], m["version"]) for m in listing["models"]] == [
        ("digits", "2"), ("digits", "1"), ("tiny", "2"), ("tiny", "1"),
    ]  # fmt: skip
    assert listing["unavailable"] == []
    assert one["batching"]["max_batch_size"] == 8
    assert one["labels"] == [str(d) for d in range(10)]
    assert (one["versions"], one["default"], one["loads"]) == (["2", "1"], True, 2)
    assert (latest["version"], latest["default"], latest["labels"]) == ("2", False, None)
    assert latest["batching"]["max_batch_size"] == 32  # the server's: tiny sets none
    assert v2_meta["versions"] == ["2", "1"]
    for name in models:
        for label in ("1", "2"):
            assert metric(metrics, "ptserve_model_info", model=name, version=label) == [1.0]
            assert metric(metrics, "ptserve_model_loads_total", model=name, version=label) == [1]
            counted = metric(metrics, "ptserve_batch_size_count", model=name, version=label)
            assert counted[0] >= 2  # JSON and binary V2 at least


async def test_openapi_shows_each_models_request(tmp_path: Path) -> None:
    build_two_models(tmp_path)
    async with serving(tmp_path) as client:  # two models, no default: no /predict
        schema = (await client.get("/openapi.json")).json()
        predict = await client.post("/predict", json={"instances": [[0] * 8]})
    paths = schema["paths"]
    for path in (
        "/v1/models/digits:predict", "/v1/models/tiny:predict", "/v2/models/digits/infer",
        "/v2/models/tiny/infer", "/v2/models/digits/versions/1/infer",
        "/v2/models/digits/versions/2/infer", "/v2/models/tiny/versions/1/infer",
    ):  # fmt: skip
        assert path in paths
    assert "/predict" not in paths
    components = schema["components"]["schemas"]
    for name, width in (("digits", 64), ("tiny", 8)):
        content = paths[f"/v1/models/{name}:predict"]["post"]["requestBody"]["content"]
        ref = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        sample = components[ref]["properties"]["instances"]["items"]
        assert (sample["minItems"], sample["maxItems"]) == (width, width)
        assert len(content["application/json"]["example"]["instances"][0]) == width
    assert predict.status_code == 404
    assert "several models ('digits', 'tiny') and none is the default" in predict.json()["error"]


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", ["3"]),
        ('version_policy = "latest"\n', ["3"]),
        ("version_policy = { latest = 2 }\n", ["3", "2"]),
        ('version_policy = "all"\n', ["3", "2", "1"]),
        ("version_policy = { specific = [1, 3] }\n", ["3", "1"]),
    ],
)
async def test_version_policies(tmp_path: Path, policy: str, served: list[str]) -> None:
    for version in (1, 2, 3):
        add_version(tmp_path, "m", version, marked_net(version))
    write_config(tmp_path, "m", policy)
    async with serving(tmp_path) as client:
        metadata = (await client.get("/v2/models/m")).json()
        answers = {
            v: v2_outputs(
                await client.post(f"/v2/models/m/versions/{v}/infer", json=v2_request(ZEROS))
            )
            for v in served
        }
        missing = [v for v in ("1", "2", "3") if v not in served]
        refused = [await client.get(f"/v2/models/m/versions/{v}") for v in missing]
        index = (await client.post("/v2/repository/index")).json()
    assert metadata["versions"] == served
    for version, (answered, outputs) in answers.items():
        assert answered == version
        assert outputs.tolist() == [[float(version)] * 2]
    for response in refused:
        assert response.status_code == 404
        assert "not served under its version policy" in response.json()["error"]
    states = {row["version"]: row["state"] for row in index}
    assert states == {v: "READY" if v in served else "UNAVAILABLE" for v in ("1", "2", "3")}


@pytest.mark.parametrize(
    ("arrange", "settings", "message"),
    [
        (lambda root: None, {"name": "x"}, "each model's folder gives its name"),
        (lambda root: None, {"default_model": "n"}, "--default-model 'n': the repository has no such model"),
        (lambda root: add_broken_version(root, "m", 1), {}, "m/1/model.pt: unknown model format"),
        (lambda root: write_config(root, "m", "port = 1\n"), {}, "'port' is a server-wide setting"),
        (lambda root: (root / "m").symlink_to(root.parent), {}, "m: resolves outside the repository"),
    ],
)  # fmt: skip
async def test_a_repository_that_cannot_be_served_stops_start_up(
    tmp_path: Path, arrange: Any, settings: dict[str, Any], message: str
) -> None:
    arrange(tmp_path)
    add_version(tmp_path, "ok", 1, marked_net(1))  # a good model beside does not hide it
    app = create_app(Settings(model_path=tmp_path, **settings))
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        async with app.router.lifespan_context(app):
            pass


async def test_an_empty_repository_starts_only_to_be_watched(tmp_path: Path) -> None:
    app = create_app(Settings(model_path=tmp_path))
    with pytest.raises(ModelLoadError, match="the repository holds no model folders"):
        async with app.router.lifespan_context(app):
            pass
    async with serving(tmp_path, watch=True) as client:
        ready = await client.get("/health/ready")
        listing = await client.get("/models")
    assert ready.status_code == 200
    assert listing.json() == {"models": [], "unavailable": []}
