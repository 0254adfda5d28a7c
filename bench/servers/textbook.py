"""The textbook FastAPI model server, written the way the tutorials write it.

Run: ``python -m bench.servers.textbook MODEL_PATH --port PORT [--sample-rank 1|3]
[--workers N]``. Settings travel to the uvicorn worker(s) through environment variables
because uvicorn imports the app factory again in each worker process.
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
SAMPLE_RANK_ENV = "BENCH_SAMPLE_RANK"

state: dict[str, Any] = {}


class VectorRequest(BaseModel):
    """Samples that are vectors (the MLP: 64 floats each)."""

    instances: list[list[float]]


class ImageRequest(BaseModel):
    """Samples that are C x H x W images (the conv net: 3 x 64 x 64 each)."""

    instances: list[list[list[list[float]]]]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once at start-up, as the tutorials do."""
    # The file was written by the harness itself, so a full unpickle is safe here.
    model = torch.load(os.environ[MODEL_PATH_ENV], weights_only=False)
    model.eval()
    state["model"] = model
    yield
    state.clear()


def run_model(instances: list[Any]) -> dict[str, Any]:
    """The tutorial's body: nested lists -> tensor -> forward -> nested lists."""
    x = torch.tensor(instances)
    with torch.no_grad():
        out = state["model"](x)
    return {"predictions": out.tolist()}


async def predict_vectors(req: VectorRequest) -> dict[str, Any]:
    """POST /predict for vector samples."""
    return run_model(req.instances)


async def predict_images(req: ImageRequest) -> dict[str, Any]:
    """POST /predict for image samples."""
    return run_model(req.instances)


def create_app() -> FastAPI:
    """The app, with the request model that matches the sample rank in the environment."""
    app = FastAPI(lifespan=lifespan)
    rank = int(os.environ.get(SAMPLE_RANK_ENV, "1"))
    endpoint = predict_images if rank == 3 else predict_vectors
    app.add_api_route("/predict", endpoint, methods=["POST"])
    return app


def main() -> None:
    """Parse argv and serve on 127.0.0.1 under uvicorn."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_path")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8000")))
    parser.add_argument("--sample-rank", type=int, choices=(1, 3), default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ[MODEL_PATH_ENV] = args.model_path
    os.environ[SAMPLE_RANK_ENV] = str(args.sample_rank)
    uvicorn.run(
        "bench.servers.textbook:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
