"""Shared fixtures: models in every format, and an in-process app with its lifespan running."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ptserve.app import create_app
from ptserve.settings import Settings
from tests.artefacts import Artefact, build_all


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artefact]:
    return build_all(tmp_path_factory.mktemp("models"))


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
