"""A trusted fastai tabular export (``--trust-pickle``) over HTTP: batched predictions equal
``learn.predict`` row by row, as before the restricted unpickler was retired."""

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import serving

fastai = pytest.importorskip(
    "fastai", reason="needs the fastai extra (scripts/test.sh installs it)"
)

from tests.fastai_learners import TabularExport  # noqa: E402

pytestmark = pytest.mark.anyio
TRUST = {"trust_pickle": True}


def predict_one(learn: Any, row: dict[str, Any]) -> tuple[str, list[float]]:
    import pandas as pd

    with learn.no_bar():
        _, index, probs = learn.predict(pd.Series(row))
    return str(learn.dls.vocab[int(index)]), probs.tolist()


async def test_batched_predictions_equal_learn_predict(tabular: TabularExport) -> None:
    assert len(tabular.rows) == 10
    async with serving(tabular.path, **TRUST) as client:
        response = await client.post("/predict", json={"instances": tabular.rows})
        meta = (await client.get("/models/export")).json()
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    vocab = list(tabular.learn.dls.vocab)
    for row, prediction in zip(tabular.rows, predictions, strict=True):
        label, probs = predict_one(tabular.learn, row)
        assert prediction["label"] == label
        assert list(prediction["probabilities"]) == vocab
        assert list(prediction["probabilities"].values()) == pytest.approx(probs, abs=1e-5)
    assert meta["format"] == "fastai"
    assert [(s["name"], s["dtype"], s["shape"]) for s in meta["signature"]["inputs"]] == [
        ("x_cat", "int64", [1]),
        ("x_cont", "float32", [4]),
    ]


COLUMN_ERRORS = [
    (
        {
            "colour": "red",
            "sepal_length": None,
            "sepal_width": None,
            "petal_length": None,
            "petal_width": None,
        },
        "instances[1]: missing column(s) 'sepal_length', 'sepal_width', 'petal_length', 'petal_width'",
    ),
    ({"petal_colour": "red"}, "instances[1]: unknown column(s) 'petal_colour'"),
    ({"sepal_length": "5.1"}, "instances[1].sepal_length: expected a number, got '5.1'"),
    ({"colour": 1}, "instances[1].colour: expected a category (a string such as 'blue'), got 1"),
]


@pytest.mark.parametrize(("change", "message"), COLUMN_ERRORS)
async def test_bad_columns_get_a_clear_422(
    tabular: TabularExport, change: dict[str, Any], message: str
) -> None:
    good = tabular.rows[0]
    bad = {k: v for k, v in {**good, **change}.items() if v is not None}  # None: left out
    async with serving(tabular.path, **TRUST) as client:
        response = await client.post("/predict", json={"instances": [good, bad]})
        after = await client.post("/predict", json={"instances": [good]})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert message in response.json()["error"]
    assert after.status_code == 200


async def test_the_openapi_example_is_a_row_of_the_learners_columns(
    tabular: TabularExport,
) -> None:
    from tests.fastai_learners import CATEGORICAL, CONTINUOUS

    async with serving(tabular.path, **TRUST) as client:
        schema = (await client.get("/openapi.json")).json()
        content = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        example = content["application/json"]["example"]
        response = await client.post("/predict", json=example)
    assert schema["components"]["schemas"]["PredictRequest"]["examples"] == [example]
    (row,) = example["instances"]
    assert list(example) == ["instances"]
    assert list(row) == [*CATEGORICAL, *CONTINUOUS]
    assert row["colour"] in {"red", "green", "blue"}
    means = tabular.learn.dls.procs.normalize.means
    assert [row[c] for c in CONTINUOUS] == [round(float(means[c]), 3) for c in CONTINUOUS]
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in list(tabular.learn.dls.vocab)


def test_info_lists_the_globals_and_says_the_export_needs_trust(tabular: TabularExport) -> None:
    from ptserve.inspect import describe_file
    from ptserve.settings import Settings

    described = describe_file(Settings(model_path=tabular.path))
    facts = described.facts
    assert facts["format"] == "fastai"
    assert "fastai.tabular.learner.TabularLearner" in facts["imports"]  # information, no verdict
    assert "refused without --trust-pickle" in facts["safety"]
    assert not any(word in facts["safety"] for word in ("safe ", "allowed"))
    assert described.refusal is not None
    assert described.refusal.startswith(f"{tabular.path}: refusing to load a fastai Learner")
    assert "parameters" not in facts
    trusted = describe_file(Settings(model_path=tabular.path, trust_pickle=True), load=True)
    assert trusted.refusal is None
    assert trusted.facts["inputs"] == [
        "x_cat: int64 [1] per sample",
        "x_cont: float32 [4] per sample",
    ]


def test_info_lists_a_dangerous_global_and_loads_nothing(tmp_path: Path) -> None:
    import os

    import torch
    from fastai.learner import Learner

    from ptserve.inspect import describe_file
    from ptserve.settings import Settings

    torch.save({"learner": Learner, "run": os.system}, tmp_path / "export.pkl")
    described = describe_file(Settings(model_path=tmp_path / "export.pkl"), load=True)
    assert described.facts["format"] == "fastai"
    assert "posix.system" in described.facts["imports"]
    assert described.refusal is not None
    assert "parameters" not in described.facts
