"""The fast JSON path accepts exactly what the full validation accepts, and gives the same arrays.

For any body, ``ArrayReader.read`` either declines (None: the full validation then decides and
words the error) or returns what the full validation returns. Bodies are generated valid and
then damaged in the ways clients get JSON wrong.
"""

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptserve.errors import ServeError
from ptserve.protocols.json_arrays import ArrayReader
from ptserve.signature import Signature, TensorSpec
from ptserve.validation import RequestDecoder

SPECS = [
    TensorSpec("x", "float32", (3,)),
    TensorSpec("x", "float32", (2, 2)),
    TensorSpec("x", "int64", (2,)),
    TensorSpec("x", "uint8", (2,)),
    TensorSpec("x", "float16", (2,)),
]
MAX_INSTANCES = 4
DAMAGE = [
    lambda v: True,
    lambda v: "1",
    lambda v: None,
    lambda v: [v],
    lambda v: 1e39,
    lambda v: 300,
    lambda v: -1,
    lambda v: 2.5,
    lambda v: 2**70,
    lambda v: 1e308,
]


def slow(spec: TensorSpec, body: bytes) -> tuple[np.ndarray, int | None] | None:
    decoder = RequestDecoder(Signature((spec,)), MAX_INSTANCES, allow_nan=False)
    decoder.fast = None
    try:
        decoded = decoder.decode(body)
    except ServeError:
        return None
    assert decoded.arrays is not None
    return decoded.arrays[0], decoded.top_k


def sample(spec: TensorSpec) -> st.SearchStrategy[Any]:
    if spec.dtype.startswith("float"):
        value: st.SearchStrategy[Any] = st.one_of(
            st.integers(-1000, 1000), st.floats(-1e4, 1e4, allow_nan=False)
        )
    else:
        value = st.integers(0, 200)
    strategy = value
    for dim in reversed(spec.shape):
        strategy = st.lists(strategy, min_size=dim, max_size=dim)
    return strategy


@st.composite
def bodies(draw: st.DrawFn) -> tuple[TensorSpec, bytes]:
    spec = draw(st.sampled_from(SPECS))
    instances = draw(st.lists(sample(spec), min_size=0, max_size=MAX_INSTANCES + 1))
    body: dict[str, Any] = {"instances": instances}
    if draw(st.booleans()):
        body["top_k"] = draw(st.sampled_from([1, 3, 0, -1, None, True, "2", 1.5]))
    if draw(st.booleans()):
        body["extra"] = 1
    if instances and draw(st.booleans()):  # damage one value
        row = instances[draw(st.integers(0, len(instances) - 1))]
        while isinstance(row[0], list):
            row = row[0]
        row[draw(st.integers(0, len(row) - 1))] = draw(st.sampled_from(DAMAGE))(row[0])
    if instances and draw(st.booleans()):  # a ragged instance
        instances.append(instances[0][:-1])
    text = json.dumps(body)
    if draw(st.booleans()):
        text = text.replace("instances", "top_k" if "top_k" not in body else "instances", 1)
    return spec, text.encode()


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies())
def test_the_fast_path_declines_or_agrees_with_the_full_validation(
    case: tuple[TensorSpec, bytes],
) -> None:
    spec, body = case
    fast = ArrayReader(spec, MAX_INSTANCES, smallest=0).read(body)
    if fast is None:
        return
    full = slow(spec, body)
    assert full is not None, f"the fast path accepted a body the validation refuses: {body!r}"
    assert fast[1] == full[1]
    assert fast[0].dtype == full[0].dtype
    np.testing.assert_array_equal(fast[0], full[0])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2, 3], [4, 5.5, -6e2]]}',
        b'{"top_k": 2, "instances": [[1, 2, 3]]}',
        b'{ "instances" : [ [1,2,3] ] , "top_k" : null }',
    ],
)
def test_plain_bodies_take_the_fast_path(body: bytes) -> None:
    spec = SPECS[0]
    fast = ArrayReader(spec, MAX_INSTANCES, smallest=0).read(body)
    full = slow(spec, body)
    assert fast is not None
    assert full is not None
    np.testing.assert_array_equal(fast[0], full[0])
    assert fast[1] == full[1]


def test_a_large_image_body_is_read_without_the_full_validation() -> None:
    spec = TensorSpec("image", "float32", (3, 64, 64))
    pixels = np.round(np.random.default_rng(0).random((2, 3, 64, 64)), 4)
    body = json.dumps({"instances": pixels.tolist()}).encode()
    fast = ArrayReader(spec, MAX_INSTANCES).read(body)
    assert fast is not None
    np.testing.assert_array_equal(fast[0], pixels.astype(np.float32))


def test_small_bodies_and_variable_shapes_go_to_the_full_validation() -> None:
    assert ArrayReader(SPECS[0], MAX_INSTANCES).read(b'{"instances": [[1, 2, 3]]}') is None
    variable = ArrayReader(TensorSpec("x", "float32", (-1,)), MAX_INSTANCES, smallest=0)
    assert variable.read(b'{"instances": [[1, 2, 3]]}') is None
