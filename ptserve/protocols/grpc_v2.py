"""The Open Inference Protocol (V2) over gRPC: ``inference.GRPCInferenceService``.

A codec and nothing more. ModelInfer reads the request's tensors against the same wire specs
as HTTP V2 (``served.v2``: names, datatypes, shapes, BYTES for image and hook inputs), runs the
one request skeleton (``pipeline.run``: admission, preprocessing, the batcher shared with every
other protocol, the deadline), and returns the outputs raw, the postprocess hook's predictions
included (BYTES ``prediction``). Metadata is HTTP V2's, as messages. An empty model name
means the server's default model (as ``POST /predict`` does): the protocol has no call that
lists the models, so a client that does not know the name learns it from ModelMetadata.
"""

from typing import TYPE_CHECKING

from ptserve import __version__
from ptserve.errors import ModelNotFound, NotReady
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
from ptserve.pipeline import ModelInput, run, unwatched
from ptserve.protocols.grpc_call import GrpcCall, Rpc
from ptserve.protocols.grpc_tensors import decode_infer, encode_infer
from ptserve.protocols.oip_v2 import V2Codec

if TYPE_CHECKING:
    from ptserve.registry import Served
    from ptserve.runtime import Runtime

SERVICE = "inference.GRPCInferenceService"
PROTOCOL = "grpc"  # the protocol label of ptserve_inference_requests
TensorMetadata = ModelMetadataResponse.TensorMetadata


class GrpcCodec:
    """The gRPC view of one model version, beside its HTTP V2 codec (whose wire specs,
    metadata and outputs it shares)."""

    def __init__(self, v2: V2Codec) -> None:
        self.v2 = v2
        service = v2.service
        # bfloat16 inputs travel as FP32 (numpy has no bfloat16); raw BF16 is widened exactly
        wire = {spec.name for spec in v2.inputs}
        self.bf16 = frozenset(
            s.name for s in service.signature.inputs if s.dtype == "bfloat16" and s.name in wire
        )
        metadata = v2.metadata()
        self.metadata = ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[TensorMetadata(**tensor) for tensor in metadata["inputs"]],
            outputs=[TensorMetadata(**tensor) for tensor in metadata["outputs"]],
        )

    async def infer(self, request: ModelInferRequest, call: GrpcCall) -> ModelInferResponse:
        """One inference request; its deadline is the call's (else the model's timeout)."""
        v2 = self.v2
        service = v2.service
        wanted: list[str] = []

        async def decode() -> ModelInput:
            decoded = decode_infer(
                request, v2.inputs, v2.outputs, self.bf16, service.settings.max_instances,
                service.settings.allow_nan,
            )  # fmt: skip
            wanted.extend(decoded.outputs)
            return v2.model_input(decoded.arrays)

        # gRPC cancels the call's task when its client leaves: no disconnect watch is needed
        timeout = call.timeout(service.timeout_s)
        model_input, outputs = await run(service, PROTOCOL, decode, timeout, unwatched)
        tensors = await v2.tensors(model_input, outputs, wanted)
        return encode_infer(
            service.name, service.version, request.id, [(name, tensors[name]) for name in wanted]
        )


class InferenceServicer:
    """The methods of ``inference.GRPCInferenceService``."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime

    def rpcs(self) -> list[Rpc]:
        """The service's methods, for the transport."""
        return [
            Rpc("ServerLive", ServerLiveRequest, ServerLiveResponse, self.server_live, health=True),
            Rpc(
                "ServerReady",
                ServerReadyRequest,
                ServerReadyResponse,
                self.server_ready,
                health=True,
            ),
            Rpc("ModelReady", ModelReadyRequest, ModelReadyResponse, self.model_ready),
            Rpc("ServerMetadata", ServerMetadataRequest, ServerMetadataResponse, self.metadata),
            Rpc("ModelMetadata", ModelMetadataRequest, ModelMetadataResponse, self.model_metadata),
            Rpc("ModelInfer", ModelInferRequest, ModelInferResponse, self.model_infer),
        ]

    def codec(self, served: "Served") -> GrpcCodec:
        """The version's gRPC codec, made on first use and kept with the version."""
        codec: GrpcCodec | None = served.transports.get("grpc")
        if codec is None:
            codec = served.transports["grpc"] = GrpcCodec(served.v2)
        return codec

    async def server_live(self, request: ServerLiveRequest, call: GrpcCall) -> ServerLiveResponse:
        """Live unless a batch loop has stopped (a restart is the cure)."""
        try:
            self.runtime.check_live()
        except NotReady:
            return ServerLiveResponse(live=False)
        return ServerLiveResponse(live=True)

    async def server_ready(
        self, request: ServerReadyRequest, call: GrpcCall
    ) -> ServerReadyResponse:
        """Ready once the models are loaded and warm; not while loading, draining or broken."""
        try:
            self.runtime.check_ready()
        except NotReady:
            return ServerReadyResponse(ready=False)
        return ServerReadyResponse(ready=True)

    async def model_ready(self, request: ModelReadyRequest, call: GrpcCall) -> ModelReadyResponse:
        """Whether that model (version) serves requests: false for an unknown one, as Triton
        answers, so that clients' ``is_model_ready`` says no instead of raising."""
        try:
            self.runtime.serving(request.name or None, request.version or None)
        except (ModelNotFound, NotReady):
            return ModelReadyResponse(ready=False)
        return ModelReadyResponse(ready=True)

    async def metadata(
        self, request: ServerMetadataRequest, call: GrpcCall
    ) -> ServerMetadataResponse:
        """Name and version; no extensions (HTTP's binary tensor extension is HTTP's)."""
        return ServerMetadataResponse(name="ptserve", version=__version__)

    async def model_metadata(
        self, request: ModelMetadataRequest, call: GrpcCall
    ) -> ModelMetadataResponse:
        """The model's versions, platform and tensors, as ``GET /v2/models/{name}`` gives them."""
        served = self.runtime.serving(request.name or None, request.version or None)
        call.model = served.service.name
        return self.codec(served).metadata

    async def model_infer(self, request: ModelInferRequest, call: GrpcCall) -> ModelInferResponse:
        """Inference on the named model (version)."""
        served = self.runtime.serving(request.model_name or None, request.model_version or None)
        call.model = served.service.name
        return await self.codec(served).infer(request, call)
