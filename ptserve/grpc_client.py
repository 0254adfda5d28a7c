"""A small typed gRPC client for the Open Inference Protocol (V2): the HTTP client's methods
(``ptserve.client``) over ``inference.GRPCInferenceService``, raw tensors both ways.

    from ptserve.client import GrpcClient

    with GrpcClient("127.0.0.1:8001") as client:
        outputs = client.infer(pixels)  # {"output": array of shape (n, 10)}

``AsyncGrpcClient`` is the same with ``await`` (``grpc.aio``). They speak plain OIP, so they work
against Triton or KServe too, given a model name. Errors raise ``GrpcInferenceError``, an
``InferenceError``. Importing this module does not import torch.
"""

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, cast

import grpc
import numpy as np
from grpc import aio

from ptserve.client import (
    DEFAULT_TIMEOUT_S,
    Array,
    InferenceError,
    Inputs,
    input_arrays,
    input_datatypes,
    tensor_datatype,
)
from ptserve.grpc.grpc_predict_v2_pb2 import (
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from ptserve.protocols.oip_tensors import BYTES, LENGTH_PREFIX, NUMPY_DTYPES

DEFAULT_TARGET = "127.0.0.1:8001"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as ptserve's grpc_max_message_bytes
SERVICE = "/inference.GRPCInferenceService/"
# method -> (request, response): the calls the clients make
METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (ServerLiveRequest, ServerLiveResponse),
    "ServerReady": (ServerReadyRequest, ServerReadyResponse),
    "ModelReady": (ModelReadyRequest, ModelReadyResponse),
    "ServerMetadata": (ServerMetadataRequest, ServerMetadataResponse),
    "ModelMetadata": (ModelMetadataRequest, ModelMetadataResponse),
    "ModelInfer": (ModelInferRequest, ModelInferResponse),
}
ERROR_CODE_KEY = "ptserve-error-code"


class GrpcInferenceError(InferenceError):
    """The server refused or failed a call: ``grpc_status`` (e.g. ``INVALID_ARGUMENT``) and
    ``status``, its number; ptserve's stable ``code`` (None from servers that send none) and
    the server's ``message``."""

    def __init__(self, grpc_status: grpc.StatusCode, message: str, code: str | None) -> None:
        number: int = grpc_status.value[0]
        super().__init__(number, message, code)
        self.args = (f"{grpc_status.name} {code or 'error'}: {message}",)
        self.grpc_status = grpc_status.name


class GrpcClient:
    """A blocking client for one model. ``target``: host:port of the gRPC server. ``model``:
    its name (default: the server's default model, whose name the first call learns).
    ``metadata``: sent with every call, e.g. ``{"authorization": "Bearer KEY"}``. ``timeout``:
    each call's deadline, which ptserve also applies to the request's time in its queue."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        model: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        metadata: Mapping[str, str] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._metadata = tuple((metadata or {}).items())
        self._channel = grpc.insecure_channel(target, options=_options(max_message_bytes))
        self._calls = _calls(self._channel)
        self._inputs: dict[str, str] | None = None

    def live(self) -> bool:
        """Whether the server answers and can make progress."""
        try:
            return bool(self._call("ServerLive", ServerLiveRequest()).live)
        except GrpcInferenceError:
            return False

    def ready(self) -> bool:
        """Whether the model (the server, when no model was named) is ready for inference."""
        try:
            if self.model is None:
                return bool(self._call("ServerReady", ServerReadyRequest()).ready)
            return bool(self._call("ModelReady", ModelReadyRequest(name=self.model)).ready)
        except GrpcInferenceError:
            return False

    def server_metadata(self) -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return _server_metadata(self._call("ServerMetadata", ServerMetadataRequest()))

    def metadata(self) -> dict[str, Any]:
        """The model's name, versions, platform, inputs and outputs."""
        response = self._call("ModelMetadata", ModelMetadataRequest(name=self.model or ""))
        metadata = _model_metadata(response)
        self.model, self._inputs = response.name, input_datatypes(metadata)
        return metadata

    def infer(self, inputs: Inputs, outputs: Sequence[str] | None = None) -> dict[str, Array]:
        """Run ``inputs`` (one batched tensor per model input by name, or just the tensor for a
        model with one input) and return the ``outputs`` named (default: all) by name."""
        datatypes = self._inputs if self._inputs is not None else input_datatypes(self.metadata())
        request = _infer_request(self.model or "", inputs, outputs, datatypes)
        return _outputs(self._call("ModelInfer", request))

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return self._calls[method](request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None


class AsyncGrpcClient:
    """``GrpcClient`` for asyncio (``grpc.aio``): the same methods, awaited."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        model: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        metadata: Mapping[str, str] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._metadata = tuple((metadata or {}).items())
        self._channel = aio.insecure_channel(target, options=_options(max_message_bytes))
        self._calls = _calls(self._channel)
        self._inputs: dict[str, str] | None = None

    async def live(self) -> bool:
        """Whether the server answers and can make progress."""
        try:
            return bool((await self._call("ServerLive", ServerLiveRequest())).live)
        except GrpcInferenceError:
            return False

    async def ready(self) -> bool:
        """Whether the model (the server, when no model was named) is ready for inference."""
        try:
            if self.model is None:
                return bool((await self._call("ServerReady", ServerReadyRequest())).ready)
            request = ModelReadyRequest(name=self.model)
            return bool((await self._call("ModelReady", request)).ready)
        except GrpcInferenceError:
            return False

    async def server_metadata(self) -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return _server_metadata(await self._call("ServerMetadata", ServerMetadataRequest()))

    async def metadata(self) -> dict[str, Any]:
        """The model's name, versions, platform, inputs and outputs."""
        request = ModelMetadataRequest(name=self.model or "")
        response: ModelMetadataResponse = await self._call("ModelMetadata", request)
        metadata = _model_metadata(response)
        self.model, self._inputs = response.name, input_datatypes(metadata)
        return metadata

    async def infer(self, inputs: Inputs, outputs: Sequence[str] | None = None) -> dict[str, Array]:
        """Run ``inputs`` (one batched tensor per model input by name, or just the tensor for a
        model with one input) and return the ``outputs`` named (default: all) by name."""
        datatypes = self._inputs
        if datatypes is None:
            datatypes = input_datatypes(await self.metadata())
        request = _infer_request(self.model or "", inputs, outputs, datatypes)
        return _outputs(await self._call("ModelInfer", request))

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await self._calls[method](request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None


def _calls(channel: grpc.Channel | aio.Channel) -> dict[str, Any]:
    """The channel's callable for each method in ``METHODS``, by name."""
    return {
        name: channel.unary_unary(
            SERVICE + name,
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        for name, (request, response) in METHODS.items()
    }


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    # gRPC's default receive limit (4 MiB) is smaller than a batch of images or their outputs
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _error(exc: grpc.RpcError) -> GrpcInferenceError:
    """A failed call as an InferenceError (ptserve's code from the trailing metadata)."""
    # the blocking client raises an RpcError that is also a Call; grpc.aio an AioRpcError
    failed = exc if isinstance(exc, aio.AioRpcError) else cast(grpc.Call, exc)
    trailers = failed.trailing_metadata() or ()
    code = next((str(v) for k, v in trailers if k == ERROR_CODE_KEY), None)
    return GrpcInferenceError(failed.code(), failed.details() or "", code)


def _server_metadata(response: ServerMetadataResponse) -> dict[str, Any]:
    return {
        "name": response.name,
        "version": response.version,
        "extensions": list(response.extensions),
    }


def _model_metadata(response: ModelMetadataResponse) -> dict[str, Any]:
    """Model metadata as the HTTP client returns it (``GET /v2/models/{name}``'s JSON)."""

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
    }


def _infer_request(
    model: str, inputs: Inputs, outputs: Sequence[str] | None, datatypes: Mapping[str, str]
) -> ModelInferRequest:
    """A request with every input's values raw."""
    arrays = input_arrays(inputs, datatypes)
    request = ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=tensor_datatype(name, array), shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def _outputs(response: ModelInferResponse) -> dict[str, Array]:
    """The output arrays by name (each writable; a BYTES output: an object array of bytes)."""
    arrays: dict[str, Array] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == BYTES:
            arrays[tensor.name] = np.array(_unpack(raw), dtype=object)
            continue
        dtype = NUMPY_DTYPES[tensor.datatype]
        arrays[tensor.name] = np.frombuffer(raw, dtype).reshape(tensor.shape).copy()
    return arrays


def _unpack(raw: bytes) -> list[bytes]:
    elements, position = [], 0
    while position < len(raw):
        length = int.from_bytes(raw[position : position + LENGTH_PREFIX], "little")
        position += LENGTH_PREFIX
        elements.append(raw[position : position + length])
        position += length
    return elements
