"""fastai exports: format detection, the pickle allowlist, and tabular row validation."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.errors import InvalidInput, ModelLoadError
from ptserve.learners import LearnerOutputs
from ptserve.learners.tabular import TabularLearner
from ptserve.loading import load_model
from ptserve.loading.detect import detect_format
from ptserve.settings import Settings


def fake_learner() -> Any:
    """Just the attributes TabularLearner reads, without fastai."""
    procs = SimpleNamespace(
        categorify=SimpleNamespace(
            classes={"colour": ["#na#", "blue", "red"], "size": ["#na#", 1, 2]}
        ),
        fill_missing=SimpleNamespace(na_dict={"width": 0.5}),
    )
    dls = SimpleNamespace(
        procs=procs, cat_names=["colour", "size", "width_na"], cont_names=["width", "height"],
        vocab=["no", "yes"],
    )  # fmt: skip
    return SimpleNamespace(dls=dls)


GOOD_ROW = {"colour": "red", "size": 2, "width": 1.5, "height": 3}

ROW_ERRORS = [
    (
        "nope",
        'instances[0]: expected an object of columns like {"colour": ..., "size": ..., "width": ..., "height": ...}, got \'nope\'',
    ),
    (
        {k: v for k, v in GOOD_ROW.items() if k != "height"},
        "instances[0]: missing column(s) 'height'",
    ),
    (
        {**GOOD_ROW, "colr": "red"},
        "instances[0]: unknown column(s) 'colr'; the learner's columns are 'colour', 'size', 'width', 'height'",
    ),
    ({**GOOD_ROW, "width": "wide"}, "instances[0].width: expected a number, got 'wide'"),
    ({**GOOD_ROW, "width": None}, "instances[0].width: expected a number, got null"),
    ({**GOOD_ROW, "width": True}, "instances[0].width: expected a number, got true"),
    (
        {**GOOD_ROW, "colour": 3},
        "instances[0].colour: expected a category (a string such as 'blue'), got 3",
    ),
    ({**GOOD_ROW, "size": "big"}, "instances[0].size: expected a number, got 'big'"),
]


@pytest.mark.parametrize(("row", "message"), ROW_ERRORS)
def test_rows_are_checked_against_the_learners_columns(row: Any, message: str) -> None:
    tabular = TabularLearner(fake_learner())
    with pytest.raises(InvalidInput) as caught:
        tabular.check_row(row, "instances[0]")
    assert str(caught.value) == message


def test_a_good_row_passes_and_generated_na_columns_are_not_asked_for() -> None:
    tabular = TabularLearner(fake_learner())
    assert tabular.columns == ["colour", "size", "width", "height"]
    tabular.check_row(GOOD_ROW, "instances[0]")
    tabular.check_row({**GOOD_ROW, "colour": "unseen"}, "instances[0]")  # -> #na#, as in fastai


def test_postprocess_decodes_like_learn_predict() -> None:
    learn = fake_learner()
    learn.loss_func = SimpleNamespace(
        activation=lambda x: torch.softmax(x, -1), decodes=lambda x: x.argmax(-1)
    )
    (first, second) = LearnerOutputs(learn).postprocess(
        [np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)]
    )
    assert first["label"] == "no"
    assert second["label"] == "yes"
    assert first["probabilities"]["no"] == pytest.approx(1 / (1 + np.exp(-2)), rel=1e-6)


# The rest needs fastai itself.


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_fastai_export_with_os_system_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.tabular.learner import TabularLearner as FastaiTabularLearner

    marker = tmp_path / "pwned"
    torch.save({"learner": FastaiTabularLearner, "payload": Evil(marker)}, tmp_path / "evil.pkl")
    assert detect_format(tmp_path / "evil.pkl") == "fastai"
    with pytest.raises(ModelLoadError, match=r"refusing to unpickle.*posix\.system"):
        load_model(Settings(model_path=tmp_path / "evil.pkl"))
    assert not marker.exists()


ALLOWLIST = [
    ("fastai.tabular.learner.TabularLearner", True),  # a class
    ("fastai.tabular.model.TabularModel", True),
    ("fastcore.foundation.L", True),
    ("pandas.DataFrame", True),
    ("fastai.metrics.accuracy", True),  # a pure function, listed by module
    ("fastai.learner.load_learner", False),  # unpickles without checks
    ("fastcore.xtras.run", False),  # runs a shell command
    ("fastcore.xtras.Config", False),  # a class that makes folders
    ("fastcore.parallel.ProcessPoolExecutor", False),
    ("pandas.HDFStore", False),  # a class that opens files (pandas.io)
    ("pandas.read_pickle", False),
    ("builtins.eval", False),
    ("posix.system", False),
    ("fastai.not_imported_module.Thing", False),
]


@pytest.mark.parametrize(("name", "expected"), ALLOWLIST)
def test_allowlist_decisions(name: str, expected: bool) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from ptserve.loading.fastai import allowed, import_entry_points

    import_entry_points()
    assert allowed(name, []) is expected
    assert allowed(name, ["fastai", "fastcore", "pandas", "builtins", "posix"]) is True


def test_getattr_and_method_binding_are_limited_to_listed_methods() -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.data.core import FilteredBase
    from fastai.learner import Learner

    from ptserve.loading.fastai import bind_method, builtin_type, class_method
    from ptserve.loading.restricted import RefusedPickle

    method = class_method(FilteredBase, "dataloaders")
    assert method is FilteredBase.dataloaders
    with pytest.raises(RefusedPickle, match="getattr"):
        class_method(Learner, "export")  # would write a file when called
    with pytest.raises(RefusedPickle, match="getattr"):
        class_method(Path, "unlink")
    with pytest.raises(RefusedPickle, match="bind"):
        bind_method(Path.unlink, Path("/nonexistent"))
    with pytest.raises(RefusedPickle, match="bind"):
        bind_method(method, object())  # not a FilteredBase
    with pytest.raises(RefusedPickle, match="_builtin_type"):
        builtin_type("FunctionType")


def test_the_unpickler_calls_only_allowlisted_objects(tmp_path: Path) -> None:
    """A pickle made only of allowed globals still cannot call what getattr fetched."""
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.data.core import FilteredBase

    from ptserve.loading.fastai import class_method
    from ptserve.loading.restricted import RefusedPickle, restricted_load

    class Calls:
        def __reduce__(self) -> Any:
            return (class_method(FilteredBase, "dataloaders"), (None,))

    torch.save(Calls(), tmp_path / "calls.pkl")
    table = {"builtins.getattr": class_method, "fastai.data.core.FilteredBase": FilteredBase}
    with pytest.raises(RefusedPickle, match=r"refused to call .*dataloaders.*not on the allowlist"):
        restricted_load(tmp_path / "calls.pkl", table)
    with pytest.raises(RefusedPickle, match=r"refused global builtins\.getattr"):
        restricted_load(tmp_path / "calls.pkl", {})


def test_the_unpickler_refuses_to_rewrite_an_allowlisted_class() -> None:
    import io

    from ptserve.loading.restricted import RefusedPickle, unpickler_class

    class Victim:
        """Stands for any allowlisted Python class."""

    # GLOBAL victim.Victim, then BUILD with slot state {"get": None}: a plain unpickler would
    # setattr(Victim, "get", None) for every later user of the class in the process.
    raw = b"\x80\x02cvictim\nVictim\nN}X\x03\x00\x00\x00getNs\x86b."
    unpickler = unpickler_class({"victim.Victim": Victim})
    with pytest.raises(RefusedPickle, match=r"refused to set attributes on .*Victim"):
        unpickler(io.BytesIO(raw)).load()
    assert not hasattr(Victim, "get")
