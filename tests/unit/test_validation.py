import json

import numpy as np
import pytest

from ptserve.errors import InvalidInput, InvalidJSON, ServeError
from ptserve.signature import Signature, TensorSpec
from ptserve.validation import RequestDecoder, example_body

VECTOR = Signature((TensorSpec("input", "float32", (4,)),))


def decoder(signature: Signature = VECTOR, **options: int | bool) -> RequestDecoder:
    settings = {"max_instances": 3, "allow_nan": False, **options}
    return RequestDecoder(signature, int(settings["max_instances"]), bool(settings["allow_nan"]))


def error_of(body: str | bytes, dec: RequestDecoder | None = None) -> ServeError:
    with pytest.raises(ServeError) as err:
        (dec or decoder()).decode(body.encode() if isinstance(body, str) else body)
    return err.value


def test_valid_body_becomes_one_batched_array() -> None:
    decoded = decoder().decode(b'{"instances": [[1, 2, 3, 4], [5, 6, 7, 8.5]]}')
    (array,) = decoded.arrays
    assert array.dtype == np.float32
    assert array.shape == (2, 4)
    assert array[1, 3] == 8.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"instances": [[1, 2, 3, 4], [1, 2, 3]]}', "instances[1]: expected 4 values, got 3"),
        ('{"instances": [[1, 2, 3, 4, 5]]}', "instances[0]: expected 4 values, got 5"),
        ('{"instances": [1]}', "instances[0]: expected a list, got 1"),
        (
            '{"instances": [[[1], 2, 3, 4]]}',
            "instances[0][0]: expected a number, got a list of 1 item",
        ),
        ('{"instances": [[1, "2", 3, 4]]}', "instances[0][1]: expected a number, got '2'"),
        ('{"instances": [[1, true, 3, 4]]}', "instances[0][1]: expected a number, got true"),
        ('{"instances": [[1, null, 3, 4]]}', "instances[0][1]: expected a number, got null"),
        ('{"instances": [[1, NaN, 3, 4]]}', "instances[0][1]: NaN and Infinity are not allowed"),
        ('{"instances": [[1, Infinity, 3, 4]]}', "NaN and Infinity are not allowed"),
        ('{"instances": [[1, 1e999, 3, 4]]}', "NaN and Infinity are not allowed"),
        ("{}", "instances: required field is missing"),
        ('{"instances": []}', "instances: at least one instance is required"),
        (
            '{"instances": [[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}',
            "at most 3 instances per request, got 4",
        ),
        ('{"instances": "abc"}', "instances: expected a list, got 'abc'"),
        ("[1, 2]", 'body: must be a JSON object like {"instances": [...]}, got a list of 2 items'),
        ('{"instances": [[1,2,3,4]], "extra": 1}', "extra: unknown field"),
        ('{"instances": [[1,2,3,4]], "top_k": 0}', "top_k"),
        ('{"instances": [[1,2,3,4]], "top_k": true}', "top_k: expected an integer, got true"),
        ('{"instances": [[1,2,3,4]], "top_k": "2"}', "top_k: expected an integer, got '2'"),
        ('{"instances": [[1e39, 2, 3, 4]]}', "instances[0][0]: 1e+39 is out of range for float32"),
    ],
)
def test_bad_instances_get_a_message_a_person_understands(body: str, message: str) -> None:
    error = error_of(body)
    assert isinstance(error, InvalidInput)
    assert error.status_code == 422
    assert message in error.message
    assert error.detail
    assert error.detail[0]["loc"] in error.message


@pytest.mark.parametrize("body", ['{"instances": [[1, 2', "{'instances': []}", "nonsense", "{,}"])
def test_malformed_json_is_a_400(body: str) -> None:
    error = error_of(body)
    assert isinstance(error, InvalidJSON)
    assert error.status_code == 400
    assert error.message.startswith("malformed JSON:")


def test_many_problems_are_counted_and_detail_is_capped() -> None:
    body = json.dumps({"instances": [["x"] * 4] * 3})
    error = error_of(body)
    assert error.message.endswith("(and 11 more problems)")
    assert error.detail is not None
    assert len(error.detail) == 12


def test_nan_is_accepted_when_allowed() -> None:
    (array,) = decoder(allow_nan=True).decode(b'{"instances": [[NaN, 1, 2, 3]]}').arrays
    assert np.isnan(array[0, 0])


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        ("uint8", "256", "256 is out of range for uint8"),
        ("uint8", "-1", "-1 is out of range for uint8"),
        ("int64", "1.5", "expected an integer, got 1.5"),
        ("bool", "1", "expected true or false, got 1"),
    ],
)
def test_integer_and_bool_inputs_are_strict(dtype: str, value: str, message: str) -> None:
    dec = decoder(Signature((TensorSpec("ids", dtype, (2,)),)))
    assert message in error_of(f'{{"instances": [[{value}, {value}]]}}', dec).message


def test_integer_input_keeps_its_dtype() -> None:
    dec = decoder(Signature((TensorSpec("ids", "int64", (2,)),)))
    (array,) = dec.decode(b'{"instances": [[1, 9007199254740993]]}').arrays
    assert array.dtype == np.int64
    assert array[0, 1] == 9007199254740993


def test_variable_dims_take_any_length_but_must_agree_in_a_request() -> None:
    dec = decoder(Signature((TensorSpec("seq", "float32", (-1, 2)),)))
    (array,) = dec.decode(b'{"instances": [[[1, 2], [3, 4], [5, 6]]]}').arrays
    assert array.shape == (1, 3, 2)
    error = error_of('{"instances": [[[1, 2]], [[1, 2], [3, 4]]]}', dec)
    assert "instances[1]: shape [2, 2] differs from instances[0] shape [1, 2]" in error.message
    assert "expected 2 values, got 3" in error_of('{"instances": [[[1, 2, 3]]]}', dec).message


def test_ragged_nesting_inside_one_sample_is_caught() -> None:
    dec = decoder(Signature((TensorSpec("grid", "float32", (-1, -1)),)))
    error = error_of('{"instances": [[[1, 2], [3]]]}', dec)
    assert "instances[0]: nested lists of unequal length" in error.message


def test_several_inputs_are_named_objects() -> None:
    signature = Signature(
        (TensorSpec("image", "float32", (2,)), TensorSpec("extra", "int32", (1,)))
    )
    decoded = decoder(signature).decode(b'{"instances": [{"image": [1, 2], "extra": [3]}]}')
    assert [a.dtype for a in decoded.arrays] == [np.float32, np.int32]
    error = error_of('{"instances": [{"image": [1, 2]}]}', decoder(signature))
    assert "instances[0].extra: required field is missing" in error.message


def test_example_body_is_valid_against_its_own_model() -> None:
    sample = np.arange(4, dtype=np.float32)
    signature = Signature(VECTOR.inputs, example=(sample,))
    body = example_body(signature)
    assert body == {"instances": [[0.0, 1.0, 2.0, 3.0]]}
    assert decoder(signature).decode(json.dumps(body).encode()).size == 1
