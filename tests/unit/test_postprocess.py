import numpy as np
import pytest

from ptserve.errors import InvalidInput, ModelLoadError
from ptserve.postprocess import Postprocessor
from ptserve.signature import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("x", "float32", (2,)),), (TensorSpec("output", "float32", (3,)),))


def test_labelled_predictions_pick_the_softmax_best() -> None:
    post = Postprocessor(SIGNATURE, ["a", "b", "c"], top_k=None)
    (prediction,) = post([np.array([[0.0, 2.0, 1.0]], dtype=np.float32)], top_k=2)
    assert prediction["label"] == "b"
    assert prediction["score"] == pytest.approx(np.exp(2) / (1 + np.exp(2) + np.exp(1)))
    assert [entry["label"] for entry in prediction["top_k"]] == ["b", "c"]


def test_non_finite_outputs_are_refused_rather_than_labelled() -> None:
    post = Postprocessor(SIGNATURE, ["a", "b", "c"], top_k=None)
    outputs = np.array([[0.0, 1.0, 2.0], [np.inf, 0.0, 1.0]], dtype=np.float32)
    with pytest.raises(InvalidInput, match=r"instances\[1\]: the model's output .* not finite"):
        post([outputs], top_k=None)


@pytest.mark.parametrize("top_k", [4, 10**30])
def test_top_k_beyond_the_classes_is_refused_before_the_model_runs(top_k: int) -> None:
    post = Postprocessor(SIGNATURE, ["a", "b", "c"], top_k=None)
    with pytest.raises(InvalidInput, match=rf"top_k: {top_k} is more than the model's 3 classes"):
        post.check(top_k)
    post.check(3)  # every class is fine


def test_a_default_top_k_beyond_the_classes_stops_start_up() -> None:
    with pytest.raises(ModelLoadError, match="top_k 5 is more than the model's 3 classes"):
        Postprocessor(SIGNATURE, ["a", "b", "c"], top_k=5)
