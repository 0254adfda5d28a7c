"""Model versions on a GPU: answers, swaps and memory, in-process.

    python -m bench.gpu_swap                       # on a machine with CUDA
    CHECK_DEVICE=cpu CHECK_WIDTH=1024 python -m bench.gpu_swap   # the same steps on the CPU

A repository holds one model (4 -> WIDTH -> WIDTH -> 4, 268 MB of float32 weights at the default
8192) whose ptserve.toml says ``device = "cuda"``. It checks that its answers match the model run
on the CPU, swaps in version 2 through the repository API while four clients send requests
(counting failures), then unloads, loads and unloads it again, reading
``torch.cuda.memory_allocated`` and ``memory_reserved`` after each step: a swapped-out or
unloaded version must give its GPU memory back. Results: $OUT (default /tmp)/gpu_swap.json.
"""

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from ptserve.app import create_app
from ptserve.settings import Settings

DEVICE = os.environ.get("CHECK_DEVICE", "cuda")
WIDTH = int(os.environ.get("CHECK_WIDTH", "8192"))
ROOT = Path(os.environ.get("CHECK_ROOT", "/tmp/gpu-repo"))
OUT = Path(os.environ.get("OUT", "/tmp"))


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 4)
    ).eval()


def add(version: int) -> nn.Module:
    model = net(version)
    stage = ROOT / "big" / f".stage-{version}"
    stage.mkdir(parents=True)
    torch.save(model, stage / "model.pt")
    stage.rename(ROOT / "big" / str(version))
    return model


def memory() -> dict[str, int]:
    if DEVICE != "cuda":
        return {"allocated": 0, "reserved": 0}
    torch.cuda.synchronize()
    return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}


async def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "big").mkdir(parents=True)
    (ROOT / "big" / "ptserve.toml").write_text(f'device = "{DEVICE}"\nmax_batch_size = 8\n')
    models = {1: add(1)}
    weight_bytes = sum(p.numel() * p.element_size() for p in models[1].parameters())
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    body = {
        "inputs": [
            {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()}
        ]
    }
    results: dict[str, object] = {
        "device": DEVICE,
        "weight_bytes": weight_bytes,
        "torch": torch.__version__,
    }
    if DEVICE == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    app = create_app(Settings(model_path=ROOT, access_log=False, log_level="warning"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://p", timeout=300) as c:

            async def answer(version: str = "") -> tuple[str, np.ndarray]:
                path = (
                    f"/v2/models/big/versions/{version}/infer"
                    if version
                    else "/v2/models/big/infer"
                )
                r = await c.post(path, json=body)
                assert r.status_code == 200, r.text
                out = r.json()
                return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(3, 4)

            def reference(version: int) -> np.ndarray:
                with torch.inference_mode():
                    return models[version](torch.from_numpy(x)).numpy()

            def close(a: np.ndarray, b: np.ndarray) -> float:
                return float(np.max(np.abs(a - b)))

            v, out = await answer()
            results["v1_max_abs_error"] = close(out, reference(1))
            results["loaded_v1"] = memory()
            statuses: list[int] = []
            stop = asyncio.Event()

            async def traffic() -> None:
                while not stop.is_set():
                    r = await c.post("/v2/models/big/infer", json=body)
                    statuses.append(r.status_code)

            clients = [asyncio.ensure_future(traffic()) for _ in range(4)]
            models[2] = add(2)
            load = await c.post("/v2/repository/models/big/load")
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            results["swap_load_status"] = load.status_code
            results["requests_during_swap"] = len(statuses)
            results["failed_during_swap"] = sum(1 for s in statuses if s != 200)
            v, out = await answer()
            results["after_swap_version"] = v
            results["v2_max_abs_error"] = close(out, reference(2))
            results["after_swap"] = memory()
            unload = await c.post("/v2/repository/models/big/unload")
            results["unload_status"] = unload.status_code
            results["after_unload"] = memory()
            reload = await c.post("/v2/repository/models/big/load")
            results["reload_status"] = reload.status_code
            results["reloaded"] = memory()
            await c.post("/v2/repository/models/big/unload")
            results["after_second_unload"] = memory()
            meta = (await c.get("/metrics")).text
            loads = [x for x in meta.splitlines() if x.startswith("ptserve_model_loads_total")]
            results["loads"] = loads
    text = json.dumps(results, indent=2)
    (OUT / "gpu_swap.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
