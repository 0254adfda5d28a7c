"""Hostile fastai exports (``tests/hostile_exports.py``) are refused by default, by the loader
``serve`` uses and by ``info``, before anything in them runs; each payload is live (the
control: trusting the file runs it)."""

from pathlib import Path

import pytest

from ptserve.errors import ModelLoadError
from ptserve.inspect import describe_file
from ptserve.loading import load_model
from ptserve.settings import Settings
from tests.conftest import NEEDS_FASTAI
from tests.fastai_learners import TabularExport
from tests.hostile_exports import VARIANTS, Hostile, build_hostile, run_trusted

pytest.importorskip("fastai", reason=NEEDS_FASTAI)


@pytest.fixture(scope="module")
def hostile(tabular: TabularExport, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Hostile]:
    return build_hostile(tabular.path, tmp_path_factory.mktemp("hostile"))


def refusal(path: Path) -> str:
    return (
        f"{path}: refusing to load a fastai Learner export: it is a full Python pickle, which "
        f"can run code when loaded. Convert it once to a pickle-free folder with 'ptserve "
        f"convert {path} OUT_DIR' and serve that with 'ptserve serve OUT_DIR', or, if you "
        "trust this file, serve it with --trust-pickle."
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_refused_by_default_and_nothing_runs(name: str, hostile: dict[str, Hostile]) -> None:
    export = hostile[name]
    with pytest.raises(ModelLoadError) as refused:
        load_model(Settings(model_path=export.path))
    assert str(refused.value) == refusal(export.path)
    described = describe_file(Settings(model_path=export.path), load=True)
    assert described.facts["format"] == "fastai"
    assert described.refusal == refusal(export.path)
    assert "parameters" not in described.facts
    assert not export.marker.exists()


def test_info_lists_what_a_hostile_export_would_import(hostile: dict[str, Hostile]) -> None:
    for name in ("os-system-at-load", "protocol-4-at-load"):
        imports = describe_file(Settings(model_path=hostile[name].path)).facts["imports"]
        assert "posix.system" in imports, imports  # listed as information: nothing imported
    assert (
        "cloudpickle.cloudpickle._make_function"
        in describe_file(Settings(model_path=hostile["stored-code-at-load"].path)).facts["imports"]
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_payload_is_live(
    name: str, hostile: dict[str, Hostile], tabular: TabularExport, tmp_path: Path
) -> None:
    """Control: trusting the file (fastai's load_learner, one prediction) runs the payload, so
    the test above that it did not run means something."""
    export = hostile[name]
    run_trusted(export, tabular.rows[0])
    assert export.marker.exists(), export.runs
    export.marker.unlink()
