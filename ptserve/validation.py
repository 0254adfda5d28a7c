"""Pydantic request models built from a model's signature, and errors a person can read.

The request model is both the validator (the raw body goes through ``model_validate_json`` once,
in pydantic-core) and the OpenAPI schema, so the documented shape is the enforced shape.
"""

from typing import Annotated, Any

import numpy as np
from annotated_types import Ge, Gt, Le, Len
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    create_model,
)

from ptserve.errors import InvalidInput, InvalidJSON, ServeError, describe_value
from ptserve.images import decode_base64
from ptserve.pipeline import ModelInput
from ptserve.protocols.json_arrays import ArrayReader
from ptserve.signature import Signature, TensorSpec, numpy_dtype

MAX_DETAIL = 20
FLOATS = {"float32", "float64", "float16", "bfloat16"}
# Tags of the two kinds of instance an image model takes; they never show in error locations.
VALUES_TAG, IMAGE_TAG = "_values", "_image"
JSON_VALUE: Any = Any  # an instance for a user's preprocess hook: any JSON value


class ImageInstance(BaseModel):
    """One instance of an image model given as an encoded image."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="A PNG, JPEG, WebP, GIF, BMP or TIFF image in base64.")


def scalar_type(dtype: str, allow_nan: bool) -> Any:
    """The Pydantic type of one value of ``dtype``: strict (no "1" for 1), range-checked."""
    if dtype in FLOATS:
        if allow_nan:
            return Annotated[float, Strict(), AllowInfNan(True)]
        # the dtype's own range: a bigger number would silently become Infinity in the tensor
        largest = float(np.finfo(numpy_dtype(dtype)).max)
        return Annotated[float, Strict(), AllowInfNan(False), Ge(-largest), Le(largest)]
    if dtype == "bool":
        return Annotated[bool, Strict()]
    info = np.iinfo(dtype)
    return Annotated[int, Strict(), Ge(int(info.min)), Le(int(info.max))]


def sample_type(spec: TensorSpec, allow_nan: bool) -> Any:
    """Nested lists shaped like one sample of ``spec``."""
    kind: Any = scalar_type(spec.dtype, allow_nan)
    for dim in reversed(spec.shape):
        nested: Any = list[kind]
        kind = Annotated[nested, Len(dim, dim)] if dim >= 0 else nested
    return kind


def request_model(
    signature: Signature,
    max_instances: int,
    allow_nan: bool,
    example: dict[str, Any],
    images: bool = False,
    raw: bool = False,
) -> type[BaseModel]:
    """The ``{"instances": [...], "top_k": k}`` model for ``signature``; with ``images`` an
    instance may also be ``{"image": "<base64>"}``; with ``raw`` (for a user's preprocess hook)
    an instance is any JSON value. ``example`` is the body the schema shows."""
    sample: Any = _instance_type(signature, allow_nan, raw)
    if images and not raw:
        sample = _or_image(sample)
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}),
        instances=(
            Annotated[list[sample], Len(1, max_instances)],
            Field(description=_describe_instances(signature, max_instances)),
        ),
        top_k=(
            Annotated[int, Strict(), Gt(0)] | None,
            Field(None, description="Return the k best labels."),
        ),
    )


def _instance_type(signature: Signature, allow_nan: bool, raw: bool) -> Any:
    if raw:
        return JSON_VALUE
    if len(signature.inputs) == 1:
        return sample_type(signature.inputs[0], allow_nan)
    fields: Any = {s.name: (sample_type(s, allow_nan), ...) for s in signature.inputs}
    return create_model("Sample", __config__=ConfigDict(extra="forbid"), **fields)


def example_body(signature: Signature, instance: Any = None) -> dict[str, Any]:
    """A valid request body: ``instance`` (a hook's example), else one sample (the saved
    example when there is one)."""
    if instance is not None:
        return {"instances": [instance]}
    arrays = signature.example_sample()
    if len(arrays) == 1:
        return {"instances": [arrays[0].tolist()]}
    return {
        "instances": [{s.name: a.tolist() for s, a in zip(signature.inputs, arrays, strict=True)}]
    }


class Translator:
    """Turns a pydantic ValidationError into a ServeError a person can read (locations like
    ``instances[3][1]``, messages that say what was expected and what came)."""

    def __init__(self, signature: Signature, max_instances: int) -> None:
        self.signature = signature
        self.max_instances = max_instances

    def __call__(self, exc: ValidationError, under: str | None = None) -> ServeError:
        """The error for ``exc``; ``under`` prefixes locations that lack it."""
        errors = exc.errors(include_url=False)
        if under is not None:
            for error in errors:
                if error["loc"][:1] != (under,):
                    error["loc"] = (under, *error["loc"])
        for error in errors:
            if error["type"] == "json_invalid":
                return InvalidJSON(f"malformed JSON: {error['ctx']['error']}")
        detail = [
            {"loc": _loc(e["loc"]), "msg": self._message(e), "type": e["type"]}
            for e in errors[:MAX_DETAIL]
        ]
        message = f"{detail[0]['loc']}: {detail[0]['msg']}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return InvalidInput(message, detail)

    def _message(self, error: Any) -> str:
        kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
        if error["loc"] == ("instances",):
            if kind == "too_short":
                return "at least one instance is required"
            if kind == "too_long":
                return f"at most {self.max_instances} instances per request, got {len(value)}"
        if kind in ("too_short", "too_long"):
            expected = ctx.get("min_length", ctx.get("max_length"))
            return f"expected {expected} values, got {ctx['actual_length']}"
        if kind == "list_type":
            return f"expected a list, got {describe_value(value)}"
        if kind in ("float_type", "float_parsing"):
            return f"expected a number, got {describe_value(value)}"
        if kind in ("int_type", "int_parsing", "int_from_float"):
            return f"expected an integer, got {describe_value(value)}"
        if kind in ("bool_type", "bool_parsing"):
            return f"expected true or false, got {describe_value(value)}"
        if kind == "finite_number":
            return "NaN and Infinity are not allowed (see the allow_nan setting)"
        if kind in ("greater_than_equal", "less_than_equal"):
            return f"{value} is out of range for {self._dtype(error['loc'])}"
        if kind == "missing":
            return "required field is missing"
        if kind == "extra_forbidden":
            return "unknown field"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            like = "" if error["loc"] else ' like {"instances": [...]}'
            return f"must be a JSON object{like}, got {describe_value(value)}"
        return str(error["msg"])

    def _dtype(self, loc: tuple[Any, ...]) -> str:
        names = {s.name: s.dtype for s in self.signature.inputs}
        named = [part for part in loc if isinstance(part, str) and part in names]
        return names[named[0]] if named else self.signature.inputs[0].dtype


class RequestDecoder:
    """Turns a raw ``{"instances": [...]}`` body into a ModelInput, or a clear ServeError.

    A plain numeric input takes the fast path (``json_arrays``); every other body, and every
    body the fast path declines, is validated in full by the signature's Pydantic model.
    """

    def __init__(
        self,
        signature: Signature,
        max_instances: int,
        allow_nan: bool,
        images: bool = False,
        raw: bool = False,
        example: Any = None,
    ) -> None:
        self.signature = signature
        self.images = images
        self.raw = raw
        self.translate = Translator(signature, max_instances)
        self.example = example_body(signature, example)
        self.model = request_model(
            signature, max_instances, allow_nan, images=images, raw=raw, example=self.example
        )
        plain = not (images or raw) and len(signature.inputs) == 1
        self.fast = ArrayReader(signature.inputs[0], max_instances) if plain else None

    def parse(self, body: bytes) -> tuple[list[Any], int | None]:
        """The validated instances and top_k of a body."""
        try:
            request = self.model.model_validate_json(body)
        except ValidationError as exc:
            raise self.translate(exc) from None
        return request.instances, request.top_k  # type: ignore[attr-defined]

    def decode(self, body: bytes) -> ModelInput:
        """Validated arrays, or (images, hooks) validated instances for the model's
        preprocessing."""
        if self.fast is not None:
            read = self.fast.read(body)
            if read is not None:
                return ModelInput([read[0]], top_k=read[1])
        instances, top_k = self.parse(body)
        if self.raw:
            return ModelInput(instances=instances, top_k=top_k)
        if self.images:
            spec = self.signature.inputs[0]
            samples = [_image_or_sample(x, i, spec) for i, x in enumerate(instances)]
            return ModelInput(instances=samples, top_k=top_k, suffix=".image")
        if len(self.signature.inputs) == 1:
            columns = [instances]
        else:
            columns = [[getattr(i, s.name) for i in instances] for s in self.signature.inputs]
        arrays = [
            _stack(col, spec) for col, spec in zip(columns, self.signature.inputs, strict=True)
        ]
        return ModelInput(arrays, top_k=top_k)


def _image_or_sample(instance: Any, index: int, spec: TensorSpec) -> Any:
    """An image instance's bytes, or a sample as an array."""
    if isinstance(instance, ImageInstance):
        return decode_base64(instance.image, f"instances[{index}].image")
    return np.asarray(instance, dtype=numpy_dtype(spec.dtype))


def _stack(samples: list[Any], spec: TensorSpec) -> np.ndarray[Any, Any]:
    try:
        array = np.asarray(samples, dtype=numpy_dtype(spec.dtype))
    except ValueError:
        array = None
    if array is None or not spec.matches(array.shape[1:]):
        raise InvalidInput(_ragged(samples, spec))
    return array


def _ragged(samples: list[Any], spec: TensorSpec) -> str:
    first = np.shape(samples[0]) if _rectangular(samples[0]) else None
    for i, sample in enumerate(samples):
        if not _rectangular(sample):
            return (
                f"instances[{i}]: nested lists of unequal length; "
                f"'{spec.name}' has shape {list(spec.shape)}"
            )
        if np.shape(sample) != first:
            return (
                f"instances[{i}]: shape {list(np.shape(sample))} differs from instances[0] "
                f"shape {list(first or ())}; samples in one request must agree on variable dims"
            )
    return f"instances: do not fit '{spec.name}' with shape {list(spec.shape)}"


def _rectangular(sample: Any) -> bool:
    try:
        np.asarray(sample)
    except ValueError:
        return False
    return True


def _or_image(sample: Any) -> Any:
    """``sample``, or ``{"image": "<base64>"}``, told apart by whether it is an object."""
    return Annotated[
        Annotated[sample, Tag(VALUES_TAG)] | Annotated[ImageInstance, Tag(IMAGE_TAG)],
        Discriminator(_instance_kind),
    ]


def _instance_kind(value: Any) -> str:
    return IMAGE_TAG if isinstance(value, dict | ImageInstance) else VALUES_TAG


def _loc(loc: tuple[Any, ...]) -> str:
    loc = tuple(p for p in loc if p not in (VALUES_TAG, IMAGE_TAG))
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or "body"


def _describe_instances(signature: Signature, max_instances: int) -> str:
    shapes = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in signature.inputs)
    return f"1 to {max_instances} samples, each {shapes} (-1: any length)"
