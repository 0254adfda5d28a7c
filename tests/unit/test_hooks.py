"""Loading handlers and checking what their hooks return."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ptserve.errors import HookFailure, InvalidInput, ModelLoadError, ServeError
from ptserve.hooks import Hooks, load_hooks, run_postprocess, run_preprocess
from ptserve.signature import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("a", "float32", (2,)), TensorSpec("b", "int64", (-1,))))


def translate(exc: ValidationError, under: str) -> ServeError:
    return InvalidInput(f"{under}: {exc.error_count()} problem(s)")


def test_handlers_from_a_file_a_module_and_an_object(tmp_path: Path) -> None:
    path = tmp_path / "my_hooks.py"
    path.write_text("def postprocess(outputs):\n    return ['ok'] * len(outputs[0])\n")
    from_file = load_hooks(str(path))
    assert from_file.preprocess is None
    assert run_postprocess(from_file, [np.zeros((2, 1))], 2, translate) == ["ok", "ok"]
    from_module = load_hooks("tests.hooks_example")
    assert from_module.preprocess is not None
    assert from_module.postprocess is not None
    from_object = load_hooks("tests.hooks_example:Scaled")
    assert from_object.preprocess is None
    assert run_postprocess(from_object, [np.ones((1, 2))], 1, translate) == [10.0]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.py", "handler missing.py: no such file"),
        ("tests.no_such_module", "handler tests.no_such_module: cannot import it"),
        ("tests.hooks_example:Nope", "handler tests.hooks_example:Nope: cannot import it"),
        ("tests.nets", "handler tests.nets: defines neither preprocess nor postprocess"),
    ],
)
def test_unusable_handlers_stop_start_up(source: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_hooks(source)


def test_a_handler_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise ImportError('no fastai here')\n")
    with pytest.raises(ModelLoadError, match=r"importing it failed \(no fastai here\)"):
        load_hooks(str(path))


def hooks(pre: object) -> Hooks:
    return Hooks("test", lambda instances: pre, None)


def test_preprocess_outputs_are_matched_to_inputs_and_cast() -> None:
    a, b = torch.ones(3, 2, dtype=torch.float64), np.zeros((3, 5))
    for produced in ((a, b), [a, b], {"b": b, "a": a}):
        arrays = run_preprocess(hooks(produced), [1, 2, 3], SIGNATURE, translate)
        assert [x.dtype for x in arrays] == [np.float32, np.int64]
        assert [x.shape for x in arrays] == [(3, 2), (3, 5)]


@pytest.mark.parametrize(
    "produced",
    [np.zeros((3, 2)), (np.zeros((3, 3)), np.zeros((3, 5))), {"a": np.zeros((3, 2))},
     (np.zeros((3, 2)), np.zeros((2, 5))), "text",
     (np.zeros((3, 2)), np.zeros((3, 5)))],  # fits the inputs, but 3 samples for 1 instance
)  # fmt: skip
def test_unusable_preprocess_outputs_are_a_500(
    produced: object, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(HookFailure):
        run_preprocess(hooks(produced), [1], SIGNATURE, translate)
    assert "returned unusable inputs" in caplog.text


def test_validation_errors_from_a_hook_are_4xx_and_others_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded = load_hooks("tests.hooks_example")
    one = Signature((TensorSpec("x", "float32", (2,)),))
    with pytest.raises(InvalidInput, match="instances: 1 problem"):
        run_preprocess(loaded, [{"x": 1}], one, translate)
    with pytest.raises(InvalidInput, match="'nope' is not a point"):
        run_preprocess(loaded, ["nope"], one, translate)
    with pytest.raises(HookFailure, match="the preprocess hook failed"):
        run_preprocess(loaded, ["boom"], one, translate)
    assert "the hook crashed" in caplog.text
    with pytest.raises(HookFailure, match="the postprocess hook failed"):
        run_postprocess(loaded, [np.full((1, 1), 13.0)], 1, translate)
