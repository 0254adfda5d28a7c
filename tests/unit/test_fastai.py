"""fastai learners' requests and answers (without fastai): row checks, a converted tabular
learner's preprocessing and decoding against hand-computed values, the manifest's rules."""

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.convert.decoding import LearnerDecoding
from ptserve.convert.manifest import Decoding, TabularPreprocessing, read_manifest
from ptserve.convert.tabular import TabularRows
from ptserve.errors import InvalidInput
from ptserve.learners import LearnerOutputs
from ptserve.learners.requests import Columns

COLUMNS = Columns(
    {"colour": ["blue", "red"], "size": [1, 2], "member": [False, True]},
    ["width", "height"],
    fillable=frozenset({"width"}),
)
GOOD_ROW = {"colour": "red", "size": 2, "member": True, "width": 1.5, "height": 3}

ROW_ERRORS = [
    ("nope", 'instances[0]: expected an object of columns like {"colour": ..., "size": ..., "member": ..., "width": ..., ...}, got \'nope\''),
    ({k: v for k, v in GOOD_ROW.items() if k != "height"}, "instances[0]: missing column(s) 'height'"),
    ({**GOOD_ROW, "colr": "red"}, "instances[0]: unknown column(s) 'colr'; the learner's columns are 'colour', 'size', 'member', 'width', 'height'"),
    ({**GOOD_ROW, "width": "wide"}, "instances[0].width: expected a number, got 'wide'"),
    ({**GOOD_ROW, "height": None}, "instances[0].height: expected a number, got null"),  # not fillable
    ({**GOOD_ROW, "width": True}, "instances[0].width: expected a number, got true"),
    ({**GOOD_ROW, "colour": 3}, "instances[0].colour: expected a category (a string such as 'blue'), got 3"),
    ({**GOOD_ROW, "size": "big"}, "instances[0].size: expected a number, got 'big'"),
    ({**GOOD_ROW, "size": True}, "instances[0].size: expected a number, got true"),
    ({**GOOD_ROW, "member": 1}, "instances[0].member: expected true or false, got 1"),
    ({**GOOD_ROW, "colour": ["red"]}, "instances[0].colour: expected a category (a string such as 'blue'), got a list"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "message"), ROW_ERRORS)
def test_rows_are_checked_against_the_learners_columns(row: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        COLUMNS.check(row, "instances[0]")
    assert str(caught.value) == message


def test_missing_and_unseen_values_pass_where_fastai_handles_them() -> None:
    COLUMNS.check(GOOD_ROW, "instances[0]")
    COLUMNS.check({**GOOD_ROW, "colour": "unseen", "size": 7}, "instances[0]")  # -> #na#
    COLUMNS.check({**GOOD_ROW, "colour": None, "member": None}, "instances[0]")  # -> #na#
    COLUMNS.check({**GOOD_ROW, "width": None}, "instances[0]")  # FillMissing fills it
    assert COLUMNS.example({"width": 2.5}) == {
        "colour": "blue", "size": 1, "member": False, "width": 2.5, "height": 0.0,
    }  # fmt: skip


def test_a_trusted_learners_outputs_decode_like_learn_predict() -> None:
    learn = SimpleNamespace(
        dls=SimpleNamespace(vocab=["no", "yes"]),
        loss_func=SimpleNamespace(
            activation=lambda x: torch.softmax(x, -1), decodes=lambda x: x.argmax(-1)
        ),
    )
    (first, second) = LearnerOutputs(learn).postprocess(
        [np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)]
    )
    assert (first["label"], second["label"]) == ("no", "yes")
    assert first["probabilities"]["no"] == pytest.approx(1 / (1 + np.exp(-2)), rel=1e-6)


SPEC = TabularPreprocessing(
    kind="tabular",
    categorical=["colour", "size", "width_na"],
    continuous=["width", "height"],
    vocab={
        "colour": ["#na#", "blue", "red"],
        "size": ["#na#", 1, 2.5, None],
        "width_na": ["#na#", False, True],
    },
    indicators={"width_na": "width"},
    fill={"width": 0.5},
    normalize={"means": [1.0, 2.0], "stds": [2.0, 4.0]},
)


def test_converted_tabular_rows_become_what_fastais_procs_make() -> None:
    rows = TabularRows(SPEC)
    assert rows.columns.names == ["colour", "size", "width", "height"]  # no _na column asked
    x_cat, x_cont = rows.preprocess(
        [
            {"colour": "red", "size": 2.5, "width": 3.0, "height": 6},
            {"colour": "green", "size": 1.0, "width": None, "height": -2.0},  # unseen, missing
            {"colour": None, "size": 7, "width": 1, "height": 2},
        ]
    )
    assert x_cat.dtype == np.int64
    assert x_cat.tolist() == [[2, 2, 1], [0, 1, 2], [0, 0, 1]]  # 1.0 matches 1, as in pandas
    assert x_cont.dtype == np.float32
    assert x_cont.tolist() == [[1.0, 1.0], [-0.25, -1.0], [0.0, 0.0]]  # width filled with 0.5


def test_converted_tabular_rows_refuse_a_bad_row_naming_it() -> None:
    with pytest.raises(
        InvalidInput, match=r"^instances\[1\]\.height: expected a number, got null$"
    ):
        TabularRows(SPEC).preprocess(
            [{"colour": "red", "size": 1, "width": 1, "height": 1},
             {"colour": "red", "size": 1, "width": 1, "height": None}]
        )  # fmt: skip


def decoded(decoding: dict[str, Any], outputs: list[list[float]]) -> list[Any]:
    spec = Decoding.model_validate(decoding)
    return LearnerDecoding(spec).postprocess([np.asarray(outputs, dtype=np.float32)])


def test_converted_decoding_softmax_sigmoid_threshold_and_regression() -> None:
    (single,) = decoded(
        {"activation": "softmax", "decode": "argmax", "threshold": None, "vocab": ["a", "b"]},
        [[0.0, math.log(3)]],
    )
    assert single["label"] == "b"
    assert single["probabilities"] == pytest.approx({"a": 0.25, "b": 0.75})
    (multi,) = decoded(
        {
            "activation": "sigmoid",
            "decode": "threshold",
            "threshold": 0.5,
            "vocab": ["x", "y", "z"],
        },
        [[2.0, -2.0, 0.1]],
    )
    assert multi["labels"] == ["x", "z"]
    assert multi["probabilities"]["y"] == pytest.approx(1 / (1 + math.exp(2)))
    (regression,) = decoded(
        {"activation": "none", "decode": "none", "threshold": None, "vocab": None}, [[1.5, -2.0]]
    )
    assert regression == {"prediction": [1.5, -2.0]}


BAD_DECODINGS = [
    ({"decode": "none"}, "decode 'none' takes no vocab"),
    ({"vocab": None}, "decode 'argmax' needs a vocab"),
    ({"threshold": 0.5}, "a threshold goes with decode 'threshold', and only with it"),
    ({"activation": "relu"}, "Input should be 'softmax', 'sigmoid' or 'none'"),
    ({"vocab": [1, 2]}, "Input should be a valid string"),
]


@pytest.mark.parametrize(("change", "message"), BAD_DECODINGS)
def test_inconsistent_decodings_are_refused(change: dict[str, Any], message: str) -> None:
    good = {"activation": "softmax", "decode": "argmax", "threshold": None, "vocab": ["a", "b"]}
    with pytest.raises(ValueError, match=message):
        Decoding.model_validate({**good, **change})


def manifest_folder(tmp_path: Path, **changes: Any) -> Path:
    manifest = {
        "format": "ptserve-converted-learner", "version": 1, "learner": "tabular",
        "source": {"file": "export.pkl", "sha256": "0" * 64, "fastai": "2.8.12", "torch": "2"},
        "model": {"file": "model.pt2", "format": "torch.export", "sha256": "0" * 64},
        "preprocessing": SPEC.model_dump(),
        "decoding": {"activation": "softmax", "decode": "argmax", "threshold": None, "vocab": ["a"]},
        **changes,
    }  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ptserve.json").write_text(json.dumps(manifest))
    return tmp_path


MANIFEST_ERRORS = [
    ({"extra": 1}, r"ptserve\.json is not a valid manifest: extra: Extra inputs are not permitted"),
    ({"version": 2}, r"version: Input should be 1"),
    ({"model": {"file": "../model.pt2", "format": "torch.export", "sha256": "0" * 64}}, r"model\.file: String should match pattern"),
    ({"model": {"file": "model.pt", "format": "pickle", "sha256": "0" * 64}}, r"model\.format: Input should be 'torch\.export'"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), MANIFEST_ERRORS)
def test_a_manifest_is_plain_data_of_one_shape(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    assert read_manifest(manifest_folder(tmp_path)).learner == "tabular"
    with pytest.raises(ValueError, match=message):
        read_manifest(manifest_folder(tmp_path, **change))


def test_a_symlinked_manifest_is_not_read(tmp_path: Path) -> None:
    real = manifest_folder(tmp_path / "real")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "ptserve.json").symlink_to(real / "ptserve.json")
    with pytest.raises(
        ValueError, match=r"cannot open ptserve\.json: Too many levels of symbolic links"
    ):
        read_manifest(tmp_path / "linked")
