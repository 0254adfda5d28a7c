import httpx
import pytest

from ptserve.app import create_app
from ptserve.settings import EXAMPLE_MODEL, Settings
from tests.conftest import serving, serving_app

pytestmark = pytest.mark.anyio


async def test_health_and_readiness() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        assert (await client.get("/health/live")).json() == {"status": "alive"}
        assert (await client.get("/health/ready")).json() == {"status": "ready"}


async def test_not_ready_before_the_model_is_loaded() -> None:
    app = create_app(Settings(model_path=EXAMPLE_MODEL))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ptserve") as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        predict = await client.post("/predict", json={"instances": [[0] * 64]})
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["code"] == "not_ready"
    assert predict.status_code == 503


async def test_model_metadata() -> None:
    async with serving(EXAMPLE_MODEL, name="digits-v2", execution="thread") as client:
        listing = (await client.get("/models")).json()
        meta = (await client.get("/models/digits-v2")).json()
        missing = await client.get("/models/nope")
    assert listing["models"] == [meta]
    assert meta["format"] == "pickle"
    assert meta["labels"] == [str(d) for d in range(10)]
    assert meta["signature"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [64]}]
    assert len(meta["sha256"]) == 64
    assert meta["parameters"] == 4810
    assert meta["loads"] == 1
    assert meta["execution"] == "thread"
    assert meta["batching"]["max_batch_size"] == 32
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "no model named 'nope'; this server serves 'digits-v2'",
        "code": "model_not_found",
    }


async def test_unknown_routes_and_methods_get_json_errors() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        missing = await client.get("/nope")
        wrong_method = await client.get("/predict")
    assert missing.status_code == 404
    assert missing.json() == {"error": "GET /nope: Not Found", "code": "not_found"}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


async def test_openapi_shows_the_real_shape_with_a_valid_example() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        schema = (await client.get("/openapi.json")).json()
        operation = schema["paths"]["/predict"]["post"]
        content = operation["requestBody"]["content"]["application/json"]
        request = schema["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
        instances = request["properties"]["instances"]
        sample = instances["items"]
        example = await client.post("/predict", json=content["example"])
    assert (sample["minItems"], sample["maxItems"]) == (64, 64)
    assert sample["items"]["type"] == "number"
    assert instances["maxItems"] == 1024
    assert request["additionalProperties"] is False
    assert "/v1/models/digits:predict" in schema["paths"]
    assert set(operation["responses"]) >= {"200", "400", "415", "422", "500", "503"}
    assert example.status_code == 200
    assert example.json()["predictions"][0]["label"] == "0"  # the saved example is a real 0


async def test_openapi_describes_v2_inference_with_an_example_that_infers() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        schema = (await client.get("/openapi.json")).json()
        for path in ("/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"):
            operation = schema["paths"][path]["post"]
            content = operation["requestBody"]["content"]
            assert set(content) == {"application/json", "application/octet-stream"}
            answer = await client.post(path, json=content["application/json"]["example"])
            assert answer.status_code == 200, answer.text
            (output,) = answer.json()["outputs"]
            assert (output["name"], output["shape"]) == ("output", [1, 10])
        request = schema["components"]["schemas"]["InferRequest_digits"]
    assert request["additionalProperties"] is False


async def test_docs_are_served_from_the_package() -> None:
    async with serving(EXAMPLE_MODEL) as client:
        page = await client.get("/docs")
        script = await client.get("/docs/assets/swagger-ui-bundle.js")
        css = await client.get("/docs/assets/swagger-ui.css")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    assert script.status_code == 200
    assert len(script.content) > 100_000
    assert css.status_code == 200


async def test_a_crashed_batch_loop_fails_liveness_and_queued_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should the batch loop ever die (a bug), requests must not hang silently: queued work
    fails, the log says why, and liveness turns 503 so the orchestrator restarts the process."""

    class Broken:
        max_batch_size = 32

        def wait_time(self, *args: object) -> float:
            raise RuntimeError("a bug in the batch policy")

    async with serving_app(EXAMPLE_MODEL) as (app, client):
        app.state.runtime.models.get(None).service.batcher.policy = Broken()
        predict = await client.post("/predict", json={"instances": [[0] * 64]})
        after = await client.post("/predict", json={"instances": [[0] * 64]})
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        v2_live = await client.get("/v2/health/live")
    assert predict.status_code == 500
    assert predict.json()["error"] == "the server's batch loop stopped"
    assert after.json()["error"] == "the server's batch loop stopped"  # at once, not at timeout
    assert (live.status_code, live.json()["code"]) == (503, "not_ready")
    assert ready.status_code == 503
    assert v2_live.status_code == 503
    assert "batch loop stopped" in v2_live.json()["error"]
    (crash,) = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert crash.getMessage() == "the batch loop stopped"
    assert "a bug in the batch policy" in caplog.text
