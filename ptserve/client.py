"""A small typed client for ptserve's Open Inference Protocol (V2) endpoints: numpy arrays or
torch tensors in, numpy arrays out, binary tensors both ways.

    from ptserve.client import Client

    with Client("http://127.0.0.1:8000") as client:
        outputs = client.infer(pixels)  # {"output": array of shape (n, 10)}

``AsyncClient`` is the same with ``await``. Both speak plain OIP, so they work against Triton or
KServe too, given a model name. ``GrpcClient`` and ``AsyncGrpcClient`` (``ptserve.grpc_client``,
reachable from here too) speak it over gRPC. Importing this module imports neither torch nor gRPC.
"""

import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias

import httpx
import numpy as np
import numpy.typing as npt
import orjson

from ptserve.protocols.oip_tensors import HEADER_LENGTH, NUMPY_DTYPES, datatype

if TYPE_CHECKING:
    import torch

    from ptserve.grpc_client import AsyncGrpcClient, GrpcClient, GrpcInferenceError

__all__ = [
    "AsyncClient", "AsyncGrpcClient", "Client", "GrpcClient", "GrpcInferenceError",
    "InferenceError",
]  # fmt: skip
GRPC_NAMES = ("AsyncGrpcClient", "GrpcClient", "GrpcInferenceError")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
Array: TypeAlias = np.ndarray[Any, Any]
TensorLike: TypeAlias = "npt.ArrayLike | torch.Tensor"
Inputs: TypeAlias = "Mapping[str, TensorLike] | TensorLike"


class InferenceError(Exception):
    """The server refused or failed a request: HTTP ``status``, ptserve's stable ``code`` (None
    from servers that send none) and the server's ``message``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status = status
        self.message = message
        self.code = code


class Client:
    """A blocking client for one model. ``model``: its name (default: the one model the server
    serves, from ptserve's ``GET /models``); ``version``: one of its versions (default: the
    server's choice, ptserve's highest served one). ``transport``: an httpx transport, e.g. for
    tests."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        model: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        version: str | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )
        self._inputs: dict[str, str] | None = None

    def live(self) -> bool:
        """Whether the server answers."""
        try:
            return self._http.get("/v2/health/live").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """Whether the model (the server, when no model was named) is ready for inference."""
        path = (
            f"{_model_path(self.model, self.version)}/ready" if self.model else "/v2/health/ready"
        )
        try:
            return self._http.get(path).status_code == 200
        except httpx.TransportError:
            return False

    def server_metadata(self) -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return _json(self._http.get("/v2"))

    def metadata(self) -> dict[str, Any]:
        """The model's name, versions, platform, inputs and outputs."""
        return _json(self._http.get(_model_path(self._model(), self.version)))

    def infer(self, inputs: Inputs, outputs: Sequence[str] | None = None) -> dict[str, Array]:
        """Run ``inputs`` (one batched tensor per model input by name, or just the tensor for a
        model with one input) and return the ``outputs`` named (default: all) by name."""
        if self._inputs is None:
            self._inputs = input_datatypes(self.metadata())
        body, length = _encode(inputs, outputs, self._inputs)
        response = self._http.post(
            f"{_model_path(self._model(), self.version)}/infer",
            content=body,
            headers={HEADER_LENGTH: str(length)},
        )
        return _decode(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _model(self) -> str:
        if self.model is None:
            self.model = _only_model(self._http.get("/models"))
        return self.model


class AsyncClient:
    """``Client`` for asyncio: the same methods, awaited. ``transport``: an httpx async
    transport, e.g. ``httpx.ASGITransport(app)`` to call an app in-process."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        model: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        version: str | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )
        self._inputs: dict[str, str] | None = None

    async def live(self) -> bool:
        """Whether the server answers."""
        try:
            return (await self._http.get("/v2/health/live")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        """Whether the model (the server, when no model was named) is ready for inference."""
        path = (
            f"{_model_path(self.model, self.version)}/ready" if self.model else "/v2/health/ready"
        )
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    async def server_metadata(self) -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return _json(await self._http.get("/v2"))

    async def metadata(self) -> dict[str, Any]:
        """The model's name, versions, platform, inputs and outputs."""
        return _json(await self._http.get(_model_path(await self._model(), self.version)))

    async def infer(self, inputs: Inputs, outputs: Sequence[str] | None = None) -> dict[str, Array]:
        """Run ``inputs`` (one batched tensor per model input by name, or just the tensor for a
        model with one input) and return the ``outputs`` named (default: all) by name."""
        if self._inputs is None:
            self._inputs = input_datatypes(await self.metadata())
        body, length = _encode(inputs, outputs, self._inputs)
        response = await self._http.post(
            f"{_model_path(await self._model(), self.version)}/infer",
            content=body,
            headers={HEADER_LENGTH: str(length)},
        )
        return _decode(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _model(self) -> str:
        if self.model is None:
            self.model = _only_model(await self._http.get("/models"))
        return self.model


def __getattr__(name: str) -> Any:
    """The gRPC clients, imported on first use: importing this module stays gRPC-free."""
    if name in GRPC_NAMES:
        from ptserve import grpc_client

        return getattr(grpc_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _model_path(model: str | None, version: str | None) -> str:
    return f"/v2/models/{model}" if version is None else f"/v2/models/{model}/versions/{version}"


def _json(response: httpx.Response) -> dict[str, Any]:
    _check(response)
    body: dict[str, Any] = orjson.loads(response.content)
    return body


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = orjson.loads(response.content)
        message, code = str(body["error"]), body.get("code")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message, code = response.text or response.reason_phrase, None
    raise InferenceError(response.status_code, message, code)


def _only_model(response: httpx.Response) -> str:
    names = list(dict.fromkeys(str(model["name"]) for model in _json(response)["models"]))
    if len(names) != 1:
        raise ValueError(f"the server serves {len(names)} models; name one with model=")
    return names[0]


def input_datatypes(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Each input's V2 datatype by name, from the model's metadata."""
    return {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}


def input_arrays(inputs: Inputs, datatypes: Mapping[str, str]) -> dict[str, Array]:
    """The inputs by name (one tensor alone: the model's only input) as contiguous arrays,
    cast to the model's ``datatypes`` where no value changes kind (float64 -> FP32 is fine,
    float -> INT64 is left for the server to refuse)."""
    if not isinstance(inputs, Mapping):
        if len(datatypes) != 1:
            raise ValueError(f"the model takes {len(datatypes)} inputs; pass them by name")
        inputs = {next(iter(datatypes)): inputs}
    return {name: _cast(_as_array(value), datatypes.get(name)) for name, value in inputs.items()}


def tensor_datatype(name: str, array: Array) -> str:
    """The OIP datatype ``array`` travels as; TypeError for a dtype that has none."""
    try:
        return datatype(array.dtype)
    except KeyError:
        raise TypeError(f"input {name!r}: dtype {array.dtype} has no OIP datatype") from None


def _encode(
    inputs: Inputs, outputs: Sequence[str] | None, datatypes: Mapping[str, str]
) -> tuple[bytes, int]:
    """A binary request (every input and output binary) and its JSON header's length."""
    arrays = input_arrays(inputs, datatypes)
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": tensor_datatype(name, array),
                "parameters": {"binary_data_size": array.nbytes},
            }
            for name, array in arrays.items()
        ]
    }
    if outputs is None:
        request["parameters"] = {"binary_data_output": True}
    else:
        request["outputs"] = [
            {"name": name, "parameters": {"binary_data": True}} for name in outputs
        ]
    header = orjson.dumps(request)
    return b"".join([header, *(array.data for array in arrays.values())]), len(header)


def _decode(response: httpx.Response) -> dict[str, Array]:
    """The output arrays of an infer response, by name (each a writable copy)."""
    _check(response)
    body = response.content
    raw_length = response.headers.get(HEADER_LENGTH)
    end = len(body) if raw_length is None else int(raw_length)
    arrays: dict[str, Array] = {}
    offset = end
    for tensor in orjson.loads(body[:end])["outputs"]:
        dtype, shape = NUMPY_DTYPES[tensor["datatype"]], tensor["shape"]
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[tensor["name"]] = np.asarray(tensor["data"], dtype).reshape(shape)
            continue
        view = np.frombuffer(body, dtype, size // dtype.itemsize, offset)
        arrays[tensor["name"]] = view.reshape(shape).copy()
        offset += size
    return arrays


def _as_array(value: TensorLike) -> Array:
    # A torch tensor can only exist if torch was imported, so there is no need to import it here.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; the wire carries FP32
            tensor = tensor.float()
        return np.ascontiguousarray(tensor.numpy())
    return np.ascontiguousarray(value)


def _cast(array: Array, wanted: str | None) -> Array:
    target = NUMPY_DTYPES.get(wanted or "")
    if target is None or array.dtype == target:
        return array
    if np.can_cast(array.dtype, target, "same_kind"):
        return array.astype(target)
    return array
