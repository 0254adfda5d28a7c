"""Shared fixtures: models in every format, and an in-process app with its lifespan running."""

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ptserve.app import create_app
from ptserve.observability import context
from ptserve.settings import Settings
from tests.artefacts import Artefact, build_all
from tests.fastai_learners import TabularExport, VisionExport, train_tabular, train_vision

NEEDS_FASTAI = "needs the fastai extra (scripts/test.sh installs it)"
NEEDS_TORCHVISION = "fastai vision learners need torchvision: run bash scripts/test-vision.sh"


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artefact]:
    return build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> TabularExport:
    """The iris tabular Learner, exported (trained once a session; skipped without fastai)."""
    pytest.importorskip("fastai", reason=NEEDS_FASTAI)
    return train_tabular(tmp_path_factory.mktemp("fastai-tabular"))


@pytest.fixture(scope="session")
def tabular_missing(tmp_path_factory: pytest.TempPathFactory) -> TabularExport:
    """The iris Learner with missing values, numeric and boolean categories (see train_tabular)."""
    pytest.importorskip("fastai", reason=NEEDS_FASTAI)
    return train_tabular(tmp_path_factory.mktemp("fastai-tabular-missing"), missing=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving_app(
    model_path: Path, **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An in-process app whose lifespan (model load) has run, and an httpx client for it."""
    app: FastAPI = create_app(Settings(model_path=model_path, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ptserve") as client:
            yield app, client


@asynccontextmanager
async def serving(model_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to an in-process app whose lifespan has run."""
    async with serving_app(model_path, **settings) as (_, client):
        yield client


def vision_export(
    tmp_path_factory: pytest.TempPathFactory, name: str, **kind: bool
) -> VisionExport:
    """A small vision Learner (see train_vision), trained once a session; skipped without
    fastai or torchvision."""
    pytest.importorskip("fastai", reason=NEEDS_FASTAI)
    pytest.importorskip("torchvision", reason=NEEDS_TORCHVISION)
    return train_vision(tmp_path_factory.mktemp(f"vision-{name}"), **kind)


@pytest.fixture(scope="session")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> VisionExport:
    return vision_export(tmp_path_factory, "rgb")


@pytest.fixture(scope="session")
def grey(tmp_path_factory: pytest.TempPathFactory) -> VisionExport:
    return vision_export(tmp_path_factory, "grey", grey=True)


@pytest.fixture(scope="session")
def augmented(tmp_path_factory: pytest.TempPathFactory) -> VisionExport:
    return vision_export(tmp_path_factory, "augmented", augmented=True)


@pytest.fixture(scope="session")
def multi_label(tmp_path_factory: pytest.TempPathFactory) -> VisionExport:
    return vision_export(tmp_path_factory, "multi-label", multi_label=True)


class RequestIds(logging.Handler):
    """Records each ptserve log message with the request id in force when it was logged."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), context.request_id.get()))


@pytest.fixture
def request_ids() -> Iterator[RequestIds]:
    handler = RequestIds()
    logging.getLogger("ptserve").addHandler(handler)
    yield handler
    logging.getLogger("ptserve").removeHandler(handler)
