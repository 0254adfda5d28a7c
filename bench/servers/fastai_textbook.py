"""The textbook fastai deployment: ``load_learner`` at start-up, ``learn.predict`` per image.

Run: ``python -m bench.servers.fastai_textbook EXPORT_PKL --port PORT``. It takes the same body
as ptserve (``{"instances": [{"image": "<base64>"}]}``) and answers the same shape, so both
servers get identical requests. The endpoint is a plain ``def`` (FastAPI runs it on its thread
pool), the kinder of the two ways tutorials write it.
"""

import argparse
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastai.vision.all import PILImage, load_learner
from fastapi import FastAPI
from pydantic import BaseModel

state: dict[str, Any] = {}


class ImageInstance(BaseModel):
    image: str


class PredictRequest(BaseModel):
    instances: list[ImageInstance]


def create_app(path: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The harness trained this file itself, so a full unpickle is safe here.
        state["learn"] = load_learner(path)
        yield
        state.clear()

    app = FastAPI(lifespan=lifespan)

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        learn = state["learn"]
        predictions = []
        for instance in request.instances:
            image = PILImage.create(base64.b64decode(instance.image))
            with learn.no_bar():
                label, _, probs = learn.predict(image)
            vocab = [str(v) for v in learn.dls.vocab]
            predictions.append(
                {
                    "label": str(label),
                    "probabilities": dict(zip(vocab, probs.tolist(), strict=True)),
                }
            )
        return {"predictions": predictions}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("export")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.export), host="127.0.0.1", port=args.port, log_level="warning",
        access_log=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
