"""The textbook FastAPI model server, written the way the tutorials write it.

Run: ``python -m bench.servers.textbook MODEL_PATH --port PORT [--workers N]``.
The model path travels to the uvicorn worker(s) through ``BENCH_MODEL_PATH`` because
uvicorn re-imports this module in each worker process.
"""

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH_ENV = "BENCH_MODEL_PATH"

state: dict[str, Any] = {}


class PredictRequest(BaseModel):
    """One or more samples; a sample is a (nested) list of floats shaped like one input."""

    instances: list[Any]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once at start-up, as the tutorials do."""
    # The file was written by the harness itself, so a full unpickle is safe here.
    model = torch.load(os.environ[MODEL_PATH_ENV], weights_only=False)
    model.eval()
    state["model"] = model
    yield
    state.clear()


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
async def predict(req: PredictRequest) -> dict[str, Any]:
    """Run the model on the request's instances and return the raw outputs."""
    x = torch.tensor(req.instances)
    with torch.no_grad():
        out = state["model"](x)
    return {"predictions": out.tolist()}


def main() -> None:
    """Parse argv and serve on 127.0.0.1 under uvicorn."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_path")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8000")))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ[MODEL_PATH_ENV] = args.model_path
    uvicorn.run(
        "bench.servers.textbook:app",
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
