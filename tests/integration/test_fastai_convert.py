"""``ptserve convert`` on fastai tabular exports, and the converted folders served in-process:
predictions equal ``learn.predict`` (probabilities to 1e-4) through /predict and V2, bad rows
get a 422, tampered folders and learners outside the supported set are refused by name, and
the child process that loads the export is confined."""

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptserve.convert import ConversionError
from ptserve.convert.command import convert
from ptserve.errors import ModelLoadError
from ptserve.loading import load_model
from ptserve.loading.detect import pickle_globals
from ptserve.settings import Settings
from tests.conftest import NEEDS_FASTAI, serving
from tests.fastai_learners import TabularExport

pytest.importorskip("fastai", reason=NEEDS_FASTAI)

pytestmark = pytest.mark.anyio
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def converted(
    tabular: TabularExport, tabular_missing: TabularExport, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[TabularExport, Path]]:
    """Both tabular learners, converted once for the module."""
    folders = {}
    for name, export in (("iris", tabular), ("missing", tabular_missing)):
        out = tmp_path_factory.mktemp(f"converted-{name}") / name
        convert(export.path, out)
        folders[name] = (export, out)
    return folders


def learn_predict(export: TabularExport, row: dict[str, Any]) -> tuple[str, list[float]]:
    import pandas as pd

    with export.learn.no_bar():
        _, index, probs = export.learn.predict(pd.Series(row, dtype=object))
    return str(export.learn.dls.vocab[int(index)]), probs.tolist()


@pytest.mark.parametrize("name", ["iris", "missing"])
async def test_a_converted_folder_predicts_what_learn_predict_does(
    converted: dict[str, tuple[TabularExport, Path]], name: str
) -> None:
    export, folder = converted[name]
    async with serving(folder) as client:
        response = await client.post("/predict", json={"instances": export.rows})
        meta = (await client.get(f"/models/{folder.name}")).json()
    assert response.status_code == 200, response.text
    vocab = [str(v) for v in export.learn.dls.vocab]
    for row, prediction in zip(export.rows, response.json()["predictions"], strict=True):
        label, probs = learn_predict(export, row)
        assert prediction["label"] == label, row
        assert list(prediction["probabilities"]) == vocab
        assert list(prediction["probabilities"].values()) == pytest.approx(probs, abs=TOLERANCE)
    assert (meta["format"], meta["handler"]) == ("converted", "converted fastai tabular learner")
    manifest = json.loads((folder / "ptserve.json").read_text())
    assert manifest["check"]["max_abs_difference"] <= TOLERANCE
    assert manifest["check"]["samples"] == 64


async def test_the_missing_value_learner_fills_flags_and_maps_unseen_categories(
    converted: dict[str, tuple[TabularExport, Path]],
) -> None:
    export, folder = converted["missing"]
    preprocessing = json.loads((folder / "ptserve.json").read_text())["preprocessing"]
    assert preprocessing["indicators"] == {
        "sepal_width_na": "sepal_width", "petal_length_na": "petal_length",
    }  # fmt: skip
    assert preprocessing["vocab"]["size"] == ["#na#", 1, 2, 3]
    assert preprocessing["vocab"]["big"] == ["#na#", False, True]
    assert any(row["colour"] == "purple" and row["sepal_width"] is None for row in export.rows)


async def test_v2_infer_on_a_converted_folder(
    converted: dict[str, tuple[TabularExport, Path]],
) -> None:
    """V2 takes the folder's instances too (one BYTES input, a JSON row per element), runs the
    same preprocessing and answers with the model's output and the BYTES ``prediction``: both
    give learn.predict's probabilities."""
    export, folder = converted["missing"]
    rows = [json.dumps(row) for row in export.rows]
    request = {
        "inputs": [{"name": "instances", "shape": [len(rows)], "datatype": "BYTES", "data": rows}]
    }
    async with serving(folder) as client:
        metadata = (await client.get(f"/v2/models/{folder.name}")).json()
        response = await client.post(f"/v2/models/{folder.name}/infer", json=request)
    assert metadata["inputs"] == [{"name": "instances", "datatype": "BYTES", "shape": [-1]}]
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    logits = np.asarray(outputs["output"]["data"], dtype=np.float64)
    logits = logits.reshape(outputs["output"]["shape"])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    answers = [json.loads(text) for text in outputs["prediction"]["data"]]
    for row, got, answer in zip(export.rows, probs, answers, strict=True):
        label, expected = learn_predict(export, row)
        assert got.tolist() == pytest.approx(expected, abs=TOLERANCE)
        assert answer["label"] == label
        assert list(answer["probabilities"].values()) == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sepal_length": "5.1"}, "instances[1].sepal_length: expected a number, got '5.1'"),
        ({"petal_width": None}, "instances[1].petal_width: expected a number, got null"),
        (
            {"colour": 1},
            "instances[1].colour: expected a category (a string such as 'blue'), got 1",
        ),
        ({"big": "yes"}, "instances[1].big: expected true or false, got 'yes'"),
        ({"petal_colour": "red"}, "instances[1]: unknown column(s) 'petal_colour'"),
    ],
)
async def test_bad_rows_get_a_clear_422_and_the_server_keeps_serving(
    converted: dict[str, tuple[TabularExport, Path]], change: dict[str, Any], message: str
) -> None:
    export, folder = converted["missing"]
    good = export.rows[0]
    async with serving(folder) as client:
        response = await client.post("/predict", json={"instances": [good, {**good, **change}]})
        after = await client.post("/predict", json={"instances": [good]})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert message in response.json()["error"]
    assert after.status_code == 200


async def test_the_openapi_example_is_a_row_that_predicts(
    converted: dict[str, tuple[TabularExport, Path]],
) -> None:
    _, folder = converted["iris"]
    async with serving(folder) as client:
        schema = (await client.get("/openapi.json")).json()
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        response = await client.post("/predict", json=body["example"])
    (row,) = body["example"]["instances"]
    assert list(row) == ["colour", "sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert response.status_code == 200, response.text


def copy_of(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, symlinks=True)
    return copy


def test_a_changed_model_file_is_refused(
    converted: dict[str, tuple[TabularExport, Path]], tmp_path: Path
) -> None:
    folder = copy_of(converted["iris"][1], tmp_path)
    with (folder / "model.pt2").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(
        ModelLoadError, match=r"model\.pt2 does not have the sha256 ptserve\.json names"
    ):
        load_model(Settings(model_path=folder))


def test_a_symlinked_model_file_is_refused(
    converted: dict[str, tuple[TabularExport, Path]], tmp_path: Path
) -> None:
    folder = copy_of(converted["iris"][1], tmp_path)
    (folder / "model.pt2").rename(tmp_path / "elsewhere.pt2")
    (folder / "model.pt2").symlink_to(tmp_path / "elsewhere.pt2")
    with pytest.raises(ModelLoadError, match=r"cannot open model\.pt2"):
        load_model(Settings(model_path=folder))


def test_a_folder_that_is_not_a_converted_one_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "ptserve.json").write_text('{"format": "something else"}')
    with pytest.raises(ModelLoadError, match="a folder, but not one 'ptserve convert' wrote"):
        load_model(Settings(model_path=tmp_path))


def test_the_check_fails_a_folder_that_disagrees_with_learn_predict(
    converted: dict[str, tuple[TabularExport, Path]], tmp_path: Path
) -> None:
    from ptserve.convert.check import verify

    folder = copy_of(converted["iris"][1], tmp_path)
    assert verify(folder).max_abs_difference <= TOLERANCE
    samples_path = folder / "check" / "samples.json"
    samples = json.loads(samples_path.read_text())
    samples["expected"][3][0] += 0.001
    samples_path.write_text(json.dumps(samples))
    with pytest.raises(
        ConversionError, match=r"probabilities differ from learn\.predict's by up to 0\.001"
    ):
        verify(folder)
    (folder / "stray.py").write_text("print('hi')")
    with pytest.raises(ConversionError, match=r"unexpected stray\.py in the folder"):
        verify(folder)


def retrained_export(tabular: TabularExport, tmp_path: Path, change: Any) -> Path:
    from tests.hostile_exports import load_genuine, save_like_export

    learn = load_genuine(tabular.path)
    change(learn)
    return save_like_export(learn, tmp_path / "export.pkl")


def test_a_learner_outside_the_supported_set_fails_naming_what(
    tabular: TabularExport, tmp_path: Path
) -> None:
    import torch

    from tests.fastai_procs import Squash

    def plain_loss(learn: Any) -> None:
        learn.loss_func = torch.nn.CrossEntropyLoss()

    def own_proc(learn: Any) -> None:
        learn.dls.procs.fs.append(Squash())

    for change, name in ((plain_loss, "torch.nn.modules.loss.CrossEntropyLoss"),
                         (own_proc, "tests.fastai_procs.Squash")):  # fmt: skip
        export = retrained_export(tabular, tmp_path / change.__name__, change)
        out = tmp_path / change.__name__ / "out"
        with pytest.raises(
            ConversionError, match=rf"{export}: the .* {name} is not one ptserve convert"
        ):
            convert(export, out)
        assert not out.exists()
        assert [p.name for p in out.parent.iterdir()] == ["export.pkl"]  # no staging left


def test_an_export_made_without_fastais_progress_callback_converts(
    tabular: TabularExport, tmp_path: Path
) -> None:
    """An export made inside ``learn.no_bar()`` holds no ProgressCallback, so loading it does
    not import fastai's progress module (nor its ``Learner.no_bar``)."""
    from fastai.callback.progress import ProgressCallback

    export = retrained_export(tabular, tmp_path, lambda learn: learn.remove_cb(ProgressCallback))
    assert "fastai.callback.progress" not in " ".join(pickle_globals(export))
    convert(export, tmp_path / "out")
    assert (tmp_path / "out" / "ptserve.json").is_file()


def test_convert_refuses_what_it_cannot_convert_before_starting(
    tabular: TabularExport, artefacts: Any, tmp_path: Path
) -> None:
    with pytest.raises(ConversionError, match="no such file"):
        convert(tmp_path / "missing.pkl", tmp_path / "out")
    with pytest.raises(ConversionError, match="a pickle file, not a fastai Learner export"):
        convert(artefacts["pickle"].path, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    with pytest.raises(ConversionError, match="already exists; name a new folder"):
        convert(tabular.path, tmp_path / "taken")


def probe(marker: str, port: int, pid: int) -> Any:
    """A payload that tries to get out of the child, then reports how each try went (the
    report comes back in the conversion's error: load_learner fails with it)."""

    def run() -> None:
        import os
        import socket
        from pathlib import Path

        outcomes = {}
        for what, attempt in (
            ("write", lambda: Path(marker).write_text("escaped")),
            ("connect", lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close()),
            ("signal", lambda: os.kill(pid, 0)),
        ):
            try:
                attempt()
                outcomes[what] = "done"
            except OSError as exc:
                outcomes[what] = f"refused ({type(exc).__name__})"
        raise RuntimeError(f"probe: {outcomes}")

    return run


def test_the_conversion_child_cannot_write_connect_or_signal_outside(
    tabular: TabularExport, tmp_path: Path
) -> None:
    """Defence in depth around code the operator trusted: where Linux offers it (here it
    does), the child sees a read-only file system, no network and no other process."""
    import os

    from tests.hostile_exports import Calls

    marker = tmp_path / "escaped"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        run = probe(str(marker), listener.getsockname()[1], os.getpid())
        export = retrained_export(
            tabular, tmp_path, lambda learn: setattr(learn, "note", Calls(run))
        )
        with pytest.raises(ConversionError) as failed:
            convert(export, tmp_path / "out")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    message = str(failed.value)
    assert "fastai's load_learner could not load it: probe:" in message
    for what, error in (
        ("write", "OSError"),
        ("connect", "OSError"),
        ("signal", "ProcessLookupError"),
    ):
        assert f"'{what}': 'refused ({error})'" in message, message
    assert not marker.exists()


def test_an_export_that_is_no_learner_fails_and_its_payload_writes_nothing(tmp_path: Path) -> None:
    """The first hostile export the suite held: a fastai global beside a reduce to os.system.
    Converting it runs the payload (the operator trusted the file), but the child's file system
    is read-only outside its staging folder, and fastai fails on what is no Learner."""
    from fastai.tabular.learner import TabularLearner

    from tests.hostile_exports import Shell, save_like_export

    marker = tmp_path / "PWNED"
    export = save_like_export(
        {"learner": TabularLearner, "payload": Shell(marker)}, tmp_path / "x.pkl"
    )
    with pytest.raises(
        ConversionError, match=r"x\.pkl: fastai's load_learner could not load it: 'dict'"
    ):
        convert(export, tmp_path / "out")
    assert not marker.exists()
