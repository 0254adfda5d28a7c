"""A folder written by ``ptserve convert`` inside a repository: as an unversioned model and as a
version, it answers as it does served alone."""

import shutil
from pathlib import Path

import pytest

from ptserve.convert.command import convert
from tests.conftest import NEEDS_FASTAI, serving
from tests.fastai_learners import TabularExport

pytest.importorskip("fastai", reason=NEEDS_FASTAI)
pytestmark = pytest.mark.anyio


async def test_converted_folders_are_models_and_versions_of_a_repository(
    tabular: TabularExport, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    convert(tabular.path, repo / "iris")  # an unversioned model: the folder is the model
    (repo / "tab").mkdir()
    shutil.copytree(repo / "iris", repo / "tab" / "3")  # version 3 of model "tab"
    body = {"instances": tabular.rows}
    async with serving(repo / "iris") as alone:
        expected = (await alone.post("/predict", json=body)).json()["predictions"]
    async with serving(repo) as client:
        unversioned = await client.post("/v1/models/iris:predict", json=body)
        versioned = await client.get("/v2/models/tab/versions/3")
        as_version = await client.post("/v1/models/tab:predict", json=body)
    assert unversioned.json()["predictions"] == expected
    assert versioned.json()["versions"] == ["3"]
    assert as_version.json()["predictions"] == expected
