"""Changing what a repository serves while it serves, in-process: the V2 repository API (with
and without API keys), broken versions, a swap while the old version still holds work, --watch
(added, removed and changed versions and models), and one model's trouble not reaching another."""

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch

from tests import nets
from tests.conftest import serving, serving_app
from tests.repos import (
    add_broken_version,
    add_version,
    marked_net,
    metric,
    v2_outputs,
    v2_request,
    write_config,
)

pytestmark = pytest.mark.anyio
ZEROS = np.zeros((1, 4), np.float32)
JSON = {"content-type": "application/json"}
HANG_GUARD_S = 120.0  # generous: only ends a test that would otherwise hang


async def answer(client: httpx.AsyncClient, model: str = "m") -> tuple[str, float]:
    """The version that answers an unversioned V2 request, and its marker output."""
    version, outputs = v2_outputs(
        await client.post(f"/v2/models/{model}/infer", json=v2_request(ZEROS))
    )
    return version, float(outputs[0, 0])


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (polling); fail after the hang guard."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("keys", [False, True])
async def test_unload_and_load_through_the_api(tmp_path: Path, keys: bool) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "m", 1, marked_net(1))
    add_version(repo, "other", 1, marked_net(5))
    settings = {}
    headers = {}
    if keys:
        (tmp_path / "keys").write_text("secret\n")
        settings = {"api_key_file": tmp_path / "keys"}
        headers = {"Authorization": "Bearer secret"}
    async with serving(repo, **settings) as client:
        anonymous = await client.post("/v2/repository/models/m/unload")
        unloaded = await client.post(
            "/v2/repository/models/m/unload",
            json={"parameters": {"unload_dependents": False}},  # what tritonclient sends
            headers=headers,
        )
        gone = await client.post("/v2/models/m/infer", json=v2_request(ZEROS), headers=headers)
        index = (await client.post("/v2/repository/index", headers=headers)).json()
        other = await client.post("/v2/models/other/infer", json=v2_request(ZEROS), headers=headers)
        add_version(repo, "m", 2, marked_net(2))
        loaded = await client.post("/v2/repository/models/m/load", headers=headers)
        client.headers.update(headers)
        back = await answer(client)
        unknown = await client.post("/v2/repository/models/nope/load")
        bad_body = await client.post(
            "/v2/repository/models/m/load", json={"parameters": {"config": "{}"}}
        )
        ready_only = (await client.post("/v2/repository/index", json={"ready": True})).json()
        listing = (await client.get("/models")).json()
    assert anonymous.status_code == (401 if keys else 200)
    assert unloaded.status_code == 200
    assert gone.status_code == 404
    assert gone.json()["error"].startswith(
        "model 'm' is not served (unloaded through the repository API)"
    )
    assert {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert other.status_code == 200
    assert loaded.json() == {"name": "m", "versions": ["2"]}
    assert back == ("2", 2.0)
    assert unknown.status_code == 404
    assert bad_body.status_code == 422
    assert "load parameters are not supported ('config')" in bad_body.json()["error"]
    assert [(r["name"], r["version"]) for r in ready_only] == [("m", "2"), ("other", "1")]
    assert [m["loads"] for m in listing["models"]] == [2, 1]


async def test_a_broken_version_leaves_the_old_serving_and_is_reported(tmp_path: Path) -> None:
    add_version(tmp_path, "m", 1, marked_net(1))
    async with serving(tmp_path) as client:
        add_broken_version(tmp_path, "m", 2)
        refused = await client.post("/v2/repository/models/m/load")
        still = await answer(client)
        index = (await client.post("/v2/repository/index")).json()
        meta = (await client.get("/models/m")).json()
        missing = await client.get("/v2/models/m/versions/2")
        metrics = (await client.get("/metrics")).text
        (tmp_path / "m" / "2" / "model.pt").unlink()
        torch.save(marked_net(2), tmp_path / "m" / "2" / "model.pt")  # repaired
        repaired = await client.post("/v2/repository/models/m/load")
        now = await answer(client)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "model 'm': m/2/model.pt: unknown model format (not a torch.save, TorchScript, "
        "torch.export or safetensors file); it serves version(s) 1",
        "code": "load_failed",
    }
    assert still == ("1", 1.0)
    reason = "m/2/model.pt: unknown model format"
    assert [(r["version"], r["state"], r["reason"][: len(reason)]) for r in index] == [
        ("1", "READY", ""), ("2", "UNAVAILABLE", reason),
    ]  # fmt: skip
    assert [u["version"] for u in meta["unavailable"]] == ["2"]
    assert str(tmp_path) not in refused.text + str(index) + str(meta)  # no server paths
    assert reason in missing.json()["error"]
    assert metric(
        metrics, "ptserve_model_loads_total", model="m", version="2", outcome="failed"
    ) == [1]
    assert repaired.status_code == 200
    assert now == ("2", 2.0)


async def test_a_swap_lets_the_old_version_finish_while_the_new_one_answers(
    tmp_path: Path,
) -> None:
    for version in (1, 2):
        stage = tmp_path / "gated" / str(version)
        stage.mkdir(parents=True)
        torch.save(nets.GatedNet(), stage / "model.pt")
    (tmp_path / "gated" / "2").rename(tmp_path / "gated" / ".later")
    write_config(
        tmp_path,
        "gated",
        'trust_modules = ["tests.nets"]\ninput_shape = [2]\nexecution = "thread"\n',
    )
    nets.GATE.clear()
    nets.ENTERED.clear()
    held_body = v2_request(np.array([[nets.HOLD, 0]], np.float32))
    free_body = v2_request(np.array([[1, 2]], np.float32))
    try:
        async with serving_app(tmp_path) as (app, client):
            held = asyncio.ensure_future(client.post("/v2/models/gated/infer", json=held_body))
            await asyncio.get_running_loop().run_in_executor(None, nets.ENTERED.wait, 10)
            (tmp_path / "gated" / ".later").rename(tmp_path / "gated" / "2")
            load = asyncio.ensure_future(client.post("/v2/repository/models/gated/load"))

            async def swapped() -> bool:  # asks the index: a request could queue behind v1
                rows = (await client.post("/v2/repository/index")).json()
                return {"name": "gated", "version": "2", "state": "READY", "reason": ""} in rows

            await eventually(swapped)
            index = (await client.post("/v2/repository/index")).json()
            new_answer = await client.post("/v2/models/gated/infer", json=free_body)
            assert not load.done()  # it returns once the old version is released
            nets.GATE.set()
            old_answer = await held
            loaded = await load
            metrics = (await client.get("/metrics")).text
            lifecycle = app.state.runtime.lifecycle
    finally:
        nets.GATE.set()
    assert [(r["version"], r["state"]) for r in index] == [("1", "UNLOADING"), ("2", "READY")]
    assert new_answer.json()["model_version"] == "2"
    assert old_answer.status_code == 200
    assert old_answer.json()["model_version"] == "1"
    assert loaded.status_code == 200
    assert lifecycle.retiring == {}
    assert metric(metrics, "ptserve_model_info", model="gated", version="1") == []
    assert metric(metrics, "ptserve_queue_depth", model="gated", version="1") == []
    assert metric(metrics, "ptserve_model_info", model="gated", version="2") == [1.0]


async def test_a_request_still_arriving_at_the_swap_is_answered_by_the_old_version(
    tmp_path: Path,
) -> None:
    add_version(tmp_path, "m", 1, marked_net(1))
    body = orjson.dumps(v2_request(ZEROS))
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:  # a client still sending when the swap comes
        yield body[:10]
        await release.wait()
        yield body[10:]

    async with serving_app(tmp_path) as (app, client):
        old = app.state.runtime.serving("m").service
        arriving = asyncio.ensure_future(
            client.post("/v2/models/m/infer", content=slow_body(), headers=JSON)
        )
        while old.batcher.arriving == 0:
            await asyncio.sleep(0.01)
        add_version(tmp_path, "m", 2, marked_net(2))
        load = asyncio.ensure_future(client.post("/v2/repository/models/m/load"))

        async def swapped() -> bool:
            return await answer(client) == ("2", 2.0)

        await eventually(swapped)
        release.set()
        answered = await arriving
        assert (await load).status_code == 200
    assert answered.status_code == 200
    assert answered.json()["model_version"] == "1"


async def test_watch_follows_added_removed_and_changed_versions_and_models(
    tmp_path: Path,
) -> None:
    add_version(tmp_path, "m", 1, marked_net(1))
    add_version(tmp_path, "m", 2, marked_net(2))
    add_version(tmp_path, "gone", 1, marked_net(9))
    write_config(tmp_path, "m", 'version_policy = "all"\n')
    async with serving_app(tmp_path, watch=True, watch_interval_s=0.05) as (_app, client):

        async def served() -> list[str]:
            response = await client.get("/v2/models/m")
            return list(response.json()["versions"]) if response.status_code == 200 else []

        async def serves(versions: list[str]) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await served() == versions

            return check

        add_version(tmp_path, "m", 3, marked_net(3))  # added
        await eventually(await serves(["3", "2", "1"]))
        (tmp_path / "m" / "2").rename(tmp_path / "m" / ".removed")  # removed
        await eventually(await serves(["3", "1"]))
        write_config(tmp_path, "m", "version_policy = { latest = 1 }\nmax_batch_size = 4\n")
        await eventually(await serves(["3"]))  # the model's settings changed: reloaded
        meta = (await client.get("/models/m")).json()
        shutil.rmtree(tmp_path / "gone")  # a whole model removed

        async def gone_is_gone() -> bool:
            return (await client.get("/v2/models/gone")).status_code == 404

        await eventually(gone_is_gone)
        add_broken_version(tmp_path, "m", 4)  # broken: reported, 3 stays

        async def reported() -> bool:
            return any(
                r["version"] == "4" for r in (await client.get("/models/m")).json()["unavailable"]
            )

        await eventually(reported)
        still = await answer(client)
        schema = (await client.get("/openapi.json")).json()
    assert meta["batching"]["max_batch_size"] == 4
    assert meta["loads"] == 4  # 1, 2, 3, then 3 again with the new settings
    assert still == ("3", 3.0)
    assert "/v2/models/m/versions/3/infer" in schema["paths"]
    assert "/v2/models/m/versions/1/infer" not in schema["paths"]  # the cached schema was renewed
    assert not any("gone" in path for path in schema["paths"])


async def test_watch_reloads_a_single_file_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(marked_net(1), path)
    async with serving(path, watch=True, watch_interval_s=0.05) as client:
        torch.save(marked_net(7), tmp_path / ".new.pt")
        (tmp_path / ".new.pt").replace(path)  # an atomic replace, as deployments should

        async def replaced() -> bool:
            return await answer(client, "model") == ("1", 7.0)

        await eventually(replaced)
        meta = (await client.get("/models/model")).json()
    assert meta["loads"] == 2


async def test_one_models_failure_or_overload_does_not_reach_another(tmp_path: Path) -> None:
    for name, net in (("gated", nets.GatedNet()), ("fails", nets.FailsOnMarker())):
        (tmp_path / name / "1").mkdir(parents=True)
        torch.save(net, tmp_path / name / "1" / "model.pt")
    write_config(
        tmp_path, "gated",
        'trust_modules = ["tests.nets"]\ninput_shape = [2]\nmax_queue = 1\nexecution = "thread"\n',
    )  # fmt: skip
    write_config(tmp_path, "fails", 'trust_modules = ["tests.nets"]\n')
    add_version(tmp_path, "fine", 1, marked_net(3))
    nets.GATE.clear()
    nets.ENTERED.clear()
    try:
        async with serving_app(tmp_path) as (app, client):
            held = asyncio.ensure_future(
                client.post("/v1/models/gated:predict", json={"instances": [[nets.HOLD, 0]]})
            )
            await asyncio.get_running_loop().run_in_executor(None, nets.ENTERED.wait, 10)
            batcher = app.state.runtime.serving("gated").service.batcher
            queued = asyncio.ensure_future(
                client.post("/v1/models/gated:predict", json={"instances": [[1, 2]]})
            )
            while batcher.queued_samples < 1:
                await asyncio.sleep(0)
            overloaded = await client.post("/v1/models/gated:predict", json={"instances": [[3, 4]]})
            failed = await client.post("/v1/models/fails:predict", json={"instances": [[-999] * 4]})
            fine = await answer(client, "fine")
            fine_v1 = await client.post("/v1/models/fine:predict", json={"instances": [[0] * 4]})
            nets.GATE.set()
            assert (await held).status_code == 200
            assert (await queued).status_code == 200
    finally:
        nets.GATE.set()
    assert overloaded.status_code == 503
    assert overloaded.json()["code"] == "overloaded"
    assert failed.status_code == 500
    assert failed.json()["code"] == "model_error"
    assert fine == ("1", 3.0)
    assert fine_v1.json()["predictions"] == [[3.0, 3.0]]


async def test_the_access_log_names_the_answering_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_version(tmp_path, "m", 4, marked_net(4))
    async with serving(tmp_path) as client:
        await answer(client)
    lines = [line for line in capsys.readouterr().err.splitlines() if '"ptserve.access"' in line]
    assert any('"model":"m","model_version":"4"' in line for line in lines)


async def test_with_several_workers_the_api_refuses_to_change_one_of_them(tmp_path: Path) -> None:
    add_version(tmp_path, "m", 1, marked_net(1))
    async with serving(tmp_path, workers=2) as client:  # in-process: the setting only
        load = await client.post("/v2/repository/models/m/load")
        unload = await client.post("/v2/repository/models/m/unload")
        index = await client.post("/v2/repository/index")
        still = await answer(client)
    for refused in (load, unload):
        assert refused.status_code == 409
        assert refused.json()["code"] == "control_unavailable"
        assert "Use --watch" in refused.json()["error"]
    assert index.status_code == 200
    assert still == ("1", 1.0)
