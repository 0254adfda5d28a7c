"""fastai exports: format detection, the pickle allowlist, and tabular row validation."""

import logging
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
from ptserve.loading.detect import detect_format, pickle_globals
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


class Calls:
    """Unpickling this calls ``func(*args)`` (a REDUCE)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return (self.func, self.args)


def test_a_name_listed_as_a_reference_can_be_stored_but_not_called(tmp_path: Path) -> None:
    from ptserve.loading.restricted import RefusedPickle, restricted_load

    torch.save(Calls(abs, -3), tmp_path / "calls.pkl")
    torch.save({"f": abs}, tmp_path / "stores.pkl")
    table = {"builtins.abs": abs}
    assert restricted_load(tmp_path / "calls.pkl", table) == 3
    with pytest.raises(RefusedPickle, match=r"refused to call builtins\.abs.*not on the allowlist"):
        restricted_load(tmp_path / "calls.pkl", table, references=["builtins.abs"])
    assert restricted_load(tmp_path / "stores.pkl", table, references=["builtins.abs"]) == {
        "f": abs
    }


def test_a_fastai_export_may_store_a_reference_but_not_call_it(tmp_path: Path) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.data.transforms import parent_label
    from fastai.learner import Learner

    from ptserve.loading.fastai import load_learner_safely

    torch.save({"learner": Learner, "label": parent_label}, tmp_path / "stores.pkl")
    torch.save({"learner": Learner, "label": Calls(parent_label, "a/b")}, tmp_path / "calls.pkl")
    assert load_learner_safely(tmp_path / "stores.pkl", [])["label"] is parent_label
    with pytest.raises(
        ModelLoadError, match=r"refused to call .*parent_label.*not on the allowlist"
    ):
        load_learner_safely(tmp_path / "calls.pkl", [])


KINDS = [
    ("fastai.data.transforms.parent_label", "reference"),  # listed in REFERENCES
    ("fastai.metrics.accuracy", "reference"),  # a function of a pure-function module
    ("builtins.print", "reference"),
    ("fastai.tabular.learner.TabularLearner", "class"),  # rebuilt, never called
    ("plum._function.Function", "class"),  # a plum class (fastai's type dispatch)
    ("collections.defaultdict", "constructor"),  # listed in CONSTRUCTORS
    ("cloudpickle.cloudpickle._make_function", "constructor"),  # a stand-in
    ("cloudpickle.cloudpickle._builtin_type", "constructor"),  # a stand-in
    ("builtins.getattr", "constructor"),  # a stand-in
    ("cloudpickle.cloudpickle._make_skeleton_class", None),  # would build a class from data
    ("fastcore.xtras.run", None),  # runs a shell command
    ("fastai.learner.load_learner", None),
    ("posix.system", None),
    # fastai-family classes that look things up by a stored name or call what they hold: with
    # them a pickle walks from a function to the builtins (fastcore's bind + _Self did)
    ("fastcore.basics.bind", None),
    ("fastcore.basics._Self", None),
    ("fasttransform.transform.Func", None),
    ("fastcore.xtras.PartialFormatter", None),
    ("fastai.data.transforms.AttrGetter", None),
    ("fastai.data.transforms.ItemGetter", None),
    ("fastai.layers.Lambda", None),  # an nn.Module calling a stored function
    ("fastai.layers.LinBnDrop", "class"),  # an ordinary building block
    ("fastai.layers.Debugger", None),  # its forward opens pdb
    ("fastai.learner.Recorder", "class"),  # training only: becomes an inert TrainingOnly
    ("fastai.learner.Metric", None),  # not in exports: not listed
]


@pytest.mark.parametrize(("name", "expected"), KINDS)
def test_kind_decisions(name: str, expected: str | None) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from ptserve.loading.fastai import import_entry_points, kind

    import_entry_points()
    assert kind(name, []) == expected


def test_a_code_object_becomes_its_qualified_name_only() -> None:
    import cloudpickle

    from ptserve.loading.fastai import CodeReference, builtin_type, code_reference
    from ptserve.loading.restricted import RefusedPickle

    class Holder:
        def method(self) -> None:
            raise AssertionError("never run")

    # The arguments cloudpickle stores for types.CodeType(...) (3.11: 18, name, then qualname).
    _, args = cloudpickle.cloudpickle._code_reduce(Holder.method.__code__)
    assert builtin_type("CodeType") is code_reference
    reference = code_reference(*args)
    assert reference == CodeReference(Holder.method.__qualname__)
    assert reference.qualname.endswith("<locals>.Holder.method")
    with pytest.raises(RefusedPickle, match="without a name"):
        code_reference(*range(18))


def test_type_union_and_union_of_fold_types_only() -> None:
    import functools
    import operator

    from ptserve.loading.fastai import type_union, union_of
    from ptserve.loading.restricted import RefusedPickle

    assert type_union(int, str) == int | str
    assert type_union(int, None) == int | None
    assert union_of(type_union, [int, str, None]) == int | str | None
    with pytest.raises(RefusedPickle, match=r"operator\.or_"):
        type_union({1}, {2})
    for func in (operator.or_, max, functools.partial(type_union)):
        with pytest.raises(RefusedPickle, match=r"functools\.reduce"):
            union_of(func, [int, str])


def test_function_state_is_checked_and_dropped() -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.metrics import accuracy

    from ptserve.loading.fastai import Unavailable, function_state
    from ptserve.loading.restricted import RefusedPickle

    # cloudpickle's own _function_setstate would set these on the function and its module.
    planted = {"__globals__": {"_planted": True}, "__defaults__": (1,)}
    own = {"__module__": "fastai.metrics", "__qualname__": "accuracy", **planted}
    function_state(accuracy, ({"_planted": True}, own))
    assert not hasattr(accuracy, "_planted")
    assert "_planted" not in accuracy.__globals__
    assert accuracy.__defaults__ != (1,)
    with pytest.raises(RefusedPickle, match="naming"):
        function_state(accuracy, ({}, {**own, "__qualname__": "error_rate"}))
    with pytest.raises(RefusedPickle, match="naming"):
        function_state(Unavailable("m", "f"), ({}, {"__module__": "m", "__qualname__": "g"}))
    with pytest.raises(RefusedPickle, match="set the state"):
        function_state(print, ({}, own))


def test_stored_functions_give_installed_allowlisted_functions_or_placeholders(
    tmp_path: Path,
) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.data.transforms import parent_label

    from ptserve.loading.fastai import (
        CodeReference,
        StoredFunctions,
        Unavailable,
        import_entry_points,
    )
    from ptserve.loading.restricted import RefusedPickle

    import_entry_points()
    stored = StoredFunctions(())
    label = stored(CodeReference("parent_label"), {"__name__": "fastai.data.transforms"})
    assert label is parent_label  # a reference used at inference: the installed function
    metric = stored(CodeReference("accuracy"), {"__name__": "fastai.metrics"})
    assert metric == Unavailable("fastai.metrics", "accuracy")  # training only: a placeholder
    system = stored(CodeReference("system"), {"__name__": "posix"})
    assert system == Unavailable("posix", "system")
    marker = tmp_path / "ran"
    with pytest.raises(RuntimeError, match=r"posix\.system is stored as code"):
        system(f"touch {marker}")
    assert not marker.exists()
    assert stored.unavailable == ["fastai.metrics.accuracy", "posix.system"]
    with pytest.raises(RefusedPickle, match="without a code object"):
        stored(compile("1", "<x>", "eval"), {"__name__": "posix"})


def test_a_cloudpickled_lambda_is_never_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A label function stored as code (cloudpickle, as learn.export does) loads as a
    placeholder: its code is never built, let alone run."""
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    import cloudpickle
    from fastai.learner import Learner

    from ptserve.loading.fastai import Unavailable, import_entry_points, load_learner_safely

    marker = tmp_path / "ran"
    f = lambda path=str(marker): Path(path).touch()  # noqa: E731
    path = tmp_path / "export.pkl"
    torch.save({"learner": Learner, "f": f}, path, pickle_module=cloudpickle, pickle_protocol=2)
    import_entry_points()
    assert detect_format(path) == "fastai"
    caplog.set_level(logging.WARNING, logger="ptserve")
    loaded = load_learner_safely(path, [])
    assert loaded["learner"] is Learner
    assert isinstance(loaded["f"], Unavailable)
    assert loaded["f"].qualname == f.__qualname__
    with pytest.raises(RuntimeError, match="does not run code from model files"):
        loaded["f"]()
    assert not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.name == "ptserve"]
    assert any(f"carries the code of {__name__}.{f.__qualname__}" in w for w in warnings)
    torch.load(path, weights_only=False)["f"]()  # the payload is live: an unchecked load runs it
    assert marker.exists()


@pytest.mark.parametrize(
    ("module", "qualname"),
    [
        ("pathlib", "Path.unlink"),  # deletes a file
        ("fastcore.xtras", "Path.delete"),  # fastcore's @patch: deletes a file or a tree
        ("fastai.learner", "Learner.export"),  # writes a file
        ("cloudpickle.cloudpickle", "subimport"),  # a stand-in's real function: imports by name
        ("cloudpickle.cloudpickle", "_make_function"),  # builds functions from code
    ],
)
def test_stored_code_never_resolves_to_a_file_touching_method(module: str, qualname: str) -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from ptserve.loading.fastai import (
        CodeReference,
        StoredFunctions,
        Unavailable,
        import_entry_points,
    )

    import_entry_points()
    stored = StoredFunctions(())
    assert isinstance(stored(CodeReference(qualname), {"__name__": module}), Unavailable)


def test_a_cloudpickled_closure_loads_as_a_placeholder(tmp_path: Path) -> None:
    """A label function that closes over a variable (cloudpickle's _make_cell) loads too."""
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    import cloudpickle
    from fastai.learner import Learner

    from ptserve.loading.fastai import Unavailable, import_entry_points, load_learner_safely

    suffix = "-label"

    def label(path: str) -> str:
        return Path(path).parent.name + suffix

    path = tmp_path / "export.pkl"
    torch.save({"learner": Learner, "f": label}, path, pickle_module=cloudpickle, pickle_protocol=2)
    assert "cloudpickle.cloudpickle._make_cell" in pickle_globals(path)
    import_entry_points()
    assert isinstance(load_learner_safely(path, [])["f"], Unavailable)
    assert torch.load(path, weights_only=False)["f"]("a/b.png") == "a-label"  # a real closure


class Host:
    """Stands for any allowlisted class without append/extend/__setstate__ of its own."""

    def get(self, key: str) -> str:
        return key


def unpickle(
    raw: bytes,
    table: dict[str, object],
    references: tuple[str, ...] = (),
    classes: tuple[str, ...] = (),
) -> Any:
    import io

    from ptserve.loading.restricted import unpickler_class

    return unpickler_class(table, references, classes)(io.BytesIO(raw)).load()


def test_appends_and_setstate_use_the_class_never_an_instance_attribute() -> None:
    """A pickle can fill an instance's __dict__ with an allowlisted callable; the APPENDS and
    BUILD opcodes must not call it (as the plain unpickler's obj.extend(...) would)."""
    from ptserve.loading.restricted import RefusedPickle

    calls: list[object] = []
    table = {"victim.Host": Host, "victim.record": calls.append}
    host = b"cvictim\nHost\n)\x81"  # GLOBAL, EMPTY_TUPLE, NEWOBJ: Host()
    extend = host + b"}X\x06\x00\x00\x00extendcvictim\nrecord\nsb(X\x01\x00\x00\x00xe."
    with pytest.raises(RefusedPickle, match="refused to append to a Host"):
        unpickle(b"\x80\x02" + extend, table)
    setstate = (
        host + b"}X\x0c\x00\x00\x00__setstate__cvictim\nrecord\nsb}X\x01\x00\x00\x00aK\x01sb."
    )
    with pytest.raises(RefusedPickle, match="refused a callable __setstate__"):
        unpickle(b"\x80\x02" + setstate, table)
    assert calls == []


def test_torch_rebuild_from_type_calls_only_allowlisted_callables() -> None:
    """torch's _rebuild_from_type_v2(func, type, args, state) calls func(*args): a reference
    (stored, never called) must not get called through it."""
    from ptserve.loading.restricted import RefusedPickle

    calls: list[object] = []
    raw = (
        b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(cvictim\nrecord\nctorch\nTensor\n"
        b"(X\x01\x00\x00\x00xt}tR."
    )
    with pytest.raises(RefusedPickle, match="refused to call"):
        unpickle(raw, {"victim.record": calls.append}, references=("victim.record",))
    assert calls == []


def test_listed_classes_are_rebuilt_never_called() -> None:
    """A class's __init__ runs on the pickle's arguments (fastai's BaseLoss.__init__ evaluated
    annotations it was given): allowlisted classes are only rebuilt, __new__ then state."""
    from ptserve.loading.restricted import RefusedPickle

    table = {"victim.Host": Host}
    with pytest.raises(RefusedPickle, match=r"refused to call .*Host"):
        unpickle(b"\x80\x02cvictim\nHost\n)R.", table, classes=("victim.Host",))
    rebuilt = unpickle(
        b"\x80\x02cvictim\nHost\n)\x81}X\x01\x00\x00\x00aK\x01sb.", table, classes=("victim.Host",)
    )
    assert isinstance(rebuilt, Host)
    assert rebuilt.a == 1


def test_a_module_carrying_hooks_is_refused() -> None:
    """nn.Module hooks are called by forward with the pickle's chosen callables."""
    import pickle

    from ptserve.loading.restricted import RefusedPickle

    module = torch.nn.Identity()
    module.register_forward_pre_hook(print)
    raw = pickle.dumps(module, protocol=2)
    table = {"torch.nn.modules.linear.Identity": torch.nn.Identity, "builtins.print": print}
    with pytest.raises(RefusedPickle, match="with _forward_pre_hooks"):
        unpickle(raw, table, classes=("torch.nn.modules.linear.Identity",))
    clean = pickle.dumps(torch.nn.Identity(), protocol=2)
    assert isinstance(
        unpickle(clean, table, classes=("torch.nn.modules.linear.Identity",)), torch.nn.Identity
    )


def test_a_defaultdict_factory_must_be_a_value_type() -> None:
    """A defaultdict calls its factory on every missing key (Categorify looks keys up)."""
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from ptserve.loading.fastai import value_defaultdict
    from ptserve.loading.restricted import RefusedPickle

    assert value_defaultdict(int)["missing"] == 0
    assert value_defaultdict(None, {"a": 1}) == {"a": 1}
    with pytest.raises(RefusedPickle, match="default factory"):
        value_defaultdict(print)


def test_state_cannot_plant_callable_dunders_or_annotations_as_text() -> None:
    """numpy calls an instance's __array__ and typing.get_type_hints evaluates text annotations:
    a pickle's state may set neither; names and docs are data."""
    from ptserve.loading.restricted import RefusedPickle

    calls: list[object] = []
    table = {"victim.Host": Host, "victim.record": calls.append}
    host = b"\x80\x02cvictim\nHost\n)\x81"
    array = host + b"}X\x09\x00\x00\x00__array__cvictim\nrecord\nsb."
    with pytest.raises(RefusedPickle, match="refused a callable __array__"):
        unpickle(array, table, classes=("victim.Host",))
    text = host + b"}X\x0f\x00\x00\x00__annotations__}X\x01\x00\x00\x00xX\x04\x00\x00\x00exprssb."
    with pytest.raises(RefusedPickle, match="annotations as text"):
        unpickle(text, table, classes=("victim.Host",))
    named = host + b"}X\x0a\x00\x00\x00__module__X\x01\x00\x00\x00msb."
    assert unpickle(named, table, classes=("victim.Host",)).__module__ == "m"
    assert calls == []


def test_a_partial_only_binds_functions_the_export_may_store() -> None:
    pytest.importorskip("fastai", reason="needs the fastai extra (scripts/test.sh installs it)")
    from fastai.data.transforms import parent_label
    from fastai.losses import BaseLoss

    from ptserve.loading.fastai import ReferencePartial, Unavailable, import_entry_points
    from ptserve.loading.restricted import RefusedPickle

    import_entry_points()
    assert ReferencePartial(parent_label)("a/b.png") == "a"
    assert ReferencePartial(Unavailable("fastai.metrics", "accuracy_multi"), thresh=0.5).keywords
    for func in (BaseLoss, print, ReferencePartial(parent_label)):
        with pytest.raises(RefusedPickle, match=r"refused functools\.partial"):
            ReferencePartial(func)
    swapped = ReferencePartial(parent_label)
    with pytest.raises(RefusedPickle, match=r"refused functools\.partial"):
        swapped.__setstate__((BaseLoss, (), {}, {}))


def test_state_must_be_a_dict_and_cannot_put_a_class_in_place_of_a_method() -> None:
    """dict.update also takes a list of pairs, which would skip every check; a class stored as
    ``get`` would have its __init__ run by whoever calls ``obj.get(...)``."""
    from ptserve.loading.restricted import RefusedPickle

    table = {"victim.Host": Host}
    host = b"\x80\x02cvictim\nHost\n)\x81"
    pairs = host + b"]X\x01\x00\x00\x00aK\x01\x86ab."
    with pytest.raises(RefusedPickle, match="refused list state"):
        unpickle(pairs, table, classes=("victim.Host",))
    shadow = host + b"}X\x03\x00\x00\x00getcvictim\nHost\nsb."
    with pytest.raises(RefusedPickle, match=r"refused a class in place of Host\.get"):
        unpickle(shadow, table, classes=("victim.Host",))


def test_state_set_by_torch_rebuilds_and_on_value_types_is_checked_too() -> None:
    """torch's tensor rebuild sets the pickle's state attribute by attribute, and value types
    with state of their own shape (pandas arrays, tensors) still get their dicts checked."""
    import pandas as pd

    from ptserve.loading.restricted import RefusedPickle, _check_state

    raw = (
        b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch.nn.parameter\nParameter\n"
        b"ctorch\nTensor\n)}X\x0f\x00\x00\x00__annotations__}X\x01\x00\x00\x00xX\x04\x00\x00\x00exprsstR."
    )
    with pytest.raises(RefusedPickle, match="annotations as text on a Tensor"):
        unpickle(raw, {})
    with pytest.raises(RefusedPickle, match="annotations as text on a IntegerArray"):
        _check_state(pd.arrays.IntegerArray, {"__annotations__": {"x": "expr"}})
    _check_state(pd.arrays.IntegerArray, ({"_data": 1}, None, 3))  # its own shape: fine
