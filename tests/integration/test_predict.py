import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ptserve.settings import EXAMPLE_MODEL
from tests.artefacts import Artefact
from tests.conftest import serving, serving_app
from tests.nets import FailsOnMarker, TwoInputs

pytestmark = pytest.mark.anyio


def digits_reference(pixels: np.ndarray) -> np.ndarray:
    model = torch.load(EXAMPLE_MODEL, weights_only=False)
    with torch.inference_mode():
        return model(torch.from_numpy(pixels.astype(np.float32))).numpy()


async def test_bundled_example_gives_labelled_predictions() -> None:
    pixels = load_digits().data[:5]
    expected = digits_reference(pixels)
    async with serving(EXAMPLE_MODEL) as client:
        response = await client.post("/predict", json={"instances": pixels.tolist()})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "digits"
    for prediction, logits, truth in zip(
        body["predictions"], expected, load_digits().target[:5], strict=True
    ):
        assert prediction["label"] == str(truth) == str(int(logits.argmax()))
        np.testing.assert_allclose(prediction["output"], logits, rtol=1e-6)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert prediction["score"] == pytest.approx(probs.max(), rel=1e-5)
        assert "top_k" not in prediction


async def test_top_k_per_request_and_kserve_v1_path() -> None:
    pixels = load_digits().data[:1].tolist()
    async with serving(EXAMPLE_MODEL) as client:
        response = await client.post(
            "/v1/models/digits:predict", json={"instances": pixels, "top_k": 3}
        )
        status = await client.get("/v1/models/digits")
        unknown = await client.post("/v1/models/other:predict", json={"instances": pixels})
    (prediction,) = response.json()["predictions"]
    scores = [entry["score"] for entry in prediction["top_k"]]
    assert len(scores) == 3
    assert scores == sorted(scores, reverse=True)
    assert prediction["top_k"][0]["label"] == prediction["label"]
    assert status.json() == {"name": "digits", "ready": True}
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "model_not_found"


@pytest.mark.parametrize("fmt", ["pickle", "state_dict", "safetensors", "torchscript", "export"])
async def test_every_format_serves_its_in_process_outputs(
    fmt: str, artefacts: dict[str, Artefact]
) -> None:
    artefact = artefacts[fmt]
    async with serving(artefact.path, **artefact.settings) as client:
        response = await client.post("/predict", json={"instances": artefact.inputs.tolist()})
        meta = (await client.get(f"/models/{artefact.path.stem}")).json()
    np.testing.assert_allclose(
        response.json()["predictions"], artefact.expected, rtol=1e-5, atol=1e-6
    )
    assert meta["format"] == fmt
    assert meta["signature"]["outputs"] == [{"name": "output", "dtype": "float32", "shape": [3]}]


BAD_BODIES = [
    ({"content": b'{"instances": [[1, 2]]}'}, 422, "invalid_input", "instances[0]: expected 64 values, got 2"),
    ({"content": b'{"instances": [[1, 2'}, 400, "invalid_json", "malformed JSON"),
    ({"content": b""}, 400, "empty_body", "empty"),
    ({"content": b"   \n"}, 400, "empty_body", "empty"),
    ({"content": b"{}"}, 422, "invalid_input", "instances: required"),
    ({"content": b'{"instances": []}'}, 422, "invalid_input", "at least one instance"),
    ({"content": b'{"instances": [' + b",".join([b"[" + b",".join([b"0"] * 64) + b"]"] * 5) + b"]}"}, 422, "invalid_input", "at most 4 instances per request, got 5"),
    ({"content": b'{"instances": [[' + b"NaN," * 63 + b"1]]}"}, 422, "invalid_input", "NaN and Infinity"),
    ({"content": b'{"instances": [["a"]]}'}, 422, "invalid_input", "expected a number, got 'a'"),
    ({"content": b'{"instances": [[1]]}', "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", "application/json"),
    ({"data": {"instances": "1"}, "headers": {}}, 415, "unsupported_media_type", "x-www-form-urlencoded"),
    ({"content": b'{"instances": [[1]], "top_k": 3}', "headers": {"content-type": "application/json"}}, 422, "invalid_input", "expected 64 values"),
    ({"content": b"\xff\xfe"}, 400, "invalid_json", "malformed JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("request_kwargs", "status", "code", "message"), BAD_BODIES)
async def test_bad_input_gets_a_clear_4xx(
    request_kwargs: dict[str, object], status: int, code: str, message: str
) -> None:
    headers = {"content-type": "application/json"}
    kwargs = {"headers": headers, **request_kwargs}
    async with serving(EXAMPLE_MODEL, max_instances=4) as client:
        response = await client.post("/predict", **kwargs)  # type: ignore[arg-type]
        after = await client.post("/predict", json={"instances": [[0] * 64]})
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert message in body["error"]
    assert after.status_code == 200  # nothing was lost or broken by the bad request


async def test_top_k_without_labels_is_refused(artefacts: dict[str, Artefact]) -> None:
    artefact = artefacts["export"]
    async with serving(artefact.path) as client:
        response = await client.post("/predict", json={"instances": [[0] * 8], "top_k": 2})
    assert response.status_code == 422
    assert response.json()["error"] == "top_k: this model has no class labels"


@pytest.mark.parametrize("top_k", [11, 10**30])
async def test_top_k_beyond_the_labels_is_refused(top_k: int) -> None:
    pixels = load_digits().data[:1].tolist()
    async with serving(EXAMPLE_MODEL) as client:
        response = await client.post("/predict", json={"instances": pixels, "top_k": top_k})
        every = await client.post("/predict", json={"instances": pixels, "top_k": 10})
    assert response.status_code == 422
    assert response.json() == {
        "error": f"top_k: {top_k} is more than the model's 10 classes",
        "code": "invalid_input",
    }
    assert len(every.json()["predictions"][0]["top_k"]) == 10


async def test_model_failure_is_a_500_without_internals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.save(FailsOnMarker(), tmp_path / "fragile.pt")
    async with serving(tmp_path / "fragile.pt", trust_modules=["tests.nets"]) as client:
        failed = await client.post("/predict", json={"instances": [[1, 2, 3, -999]]})
        fine = await client.post("/predict", json={"instances": [[1, 2, 3, 4]]})
    assert failed.status_code == 500
    assert failed.json() == {
        "error": "the model failed on this input; the server log has details",
        "code": "model_error",
    }
    assert "marker value seen" in caplog.text  # the cause is logged, not sent
    assert fine.status_code == 200


async def test_several_inputs_and_named_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TwoInputs().eval()
    np.savez(
        tmp_path / "two.example.npz",
        image=np.ones((1, 4), np.float32),
        extra=np.ones((1, 3), np.float32),
    )
    torch.save(net, tmp_path / "two.pt")
    image, extra = (
        np.random.default_rng(1).normal(size=(2, 4)),
        np.random.default_rng(2).normal(size=(2, 3)),
    )
    instances = [{"image": image[i].tolist(), "extra": extra[i].tolist()} for i in range(2)]
    async with serving(tmp_path / "two.pt", trust_modules=["tests.nets"]) as client:
        response = await client.post("/predict", json={"instances": instances})
    with torch.inference_mode():
        expected = net(
            torch.tensor(image, dtype=torch.float32), torch.tensor(extra, dtype=torch.float32)
        )
    predictions = response.json()["predictions"]
    assert set(predictions[0]) == {"sum", "norm"}
    np.testing.assert_allclose([p["sum"] for p in predictions], expected["sum"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        [p["norm"] for p in predictions], expected["norm"].numpy(), rtol=1e-5
    )


async def test_concurrent_requests_load_the_model_once() -> None:
    pixels = load_digits().data[:40]
    expected = digits_reference(pixels).argmax(axis=1)
    async with serving(EXAMPLE_MODEL) as client:
        responses = await asyncio.gather(
            *(client.post("/predict", json={"instances": [row.tolist()]}) for row in pixels)
        )
        meta = (await client.get("/models/digits")).json()
    labels = [int(r.json()["predictions"][0]["label"]) for r in responses]
    assert labels == expected.tolist()
    assert meta["loads"] == 1


async def test_compiled_model_serves_the_same_outputs(artefacts: dict[str, Artefact]) -> None:
    artefact = artefacts["pickle"]
    async with serving_app(artefact.path, compile=True, **artefact.settings) as (app, client):
        response = await client.post("/predict", json={"instances": artefact.inputs.tolist()})
        model = app.state.runtime.models.get(None).service.runner.model
    assert hasattr(model, "_orig_mod")  # torch.compile's wrapper, not the plain module
    np.testing.assert_allclose(
        response.json()["predictions"], artefact.expected, rtol=1e-4, atol=1e-5
    )


async def test_two_inference_threads_serve_concurrent_requests(
    artefacts: dict[str, Artefact],
) -> None:
    artefact = artefacts["export"]
    async with serving(
        artefact.path, execution="thread", inference_threads=2, max_batch_size=2
    ) as client:
        responses = await asyncio.gather(
            *(
                client.post("/predict", json={"instances": [row.tolist()]})
                for row in artefact.inputs
            )
        )
    got = [r.json()["predictions"][0] for r in responses]
    np.testing.assert_allclose(got, artefact.expected, rtol=1e-5, atol=1e-6)
