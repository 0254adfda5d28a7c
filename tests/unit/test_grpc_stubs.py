"""ptserve's gRPC messages (ptserve/grpc): generated from the .proto files in the repo, and the
same on the wire as the stubs Triton's client and grpcio-health-checking use, imported in the
same process (ptserve's own descriptor pool is why both can be)."""

import subprocess
import sys

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpc_health.v1 import health_pb2 as standard_health
from tritonclient.grpc import service_pb2 as triton

from ptserve.grpc import grpc_predict_v2_pb2, health_pb2
from ptserve.grpc.pool import POOL
from tests.e2e.conftest import REPO_ROOT


def test_the_generated_modules_match_the_proto_files() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/generate_grpc.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def fields(message: Descriptor) -> dict[str, tuple[int, int, bool, str | None]]:
    """Each field's number, wire type, repetition and message or enum type, by name."""
    found = {}
    for field in message.fields:
        kind = field.message_type or field.enum_type
        found[field.name] = (
            field.number,
            field.type,
            field.is_repeated,
            kind.full_name if kind else None,
        )
    return found


def messages(file: FileDescriptor) -> dict[str, Descriptor]:
    """Every message of ``file``, nested ones included, by full name."""
    found: dict[str, Descriptor] = {}
    pending = list(file.message_types_by_name.values())
    while pending:
        message = pending.pop()
        found[message.full_name] = message
        pending.extend(message.nested_types)
    return found


@pytest.mark.parametrize(
    ("ours", "theirs", "superset"),
    [
        (grpc_predict_v2_pb2.DESCRIPTOR, triton.DESCRIPTOR, True),
        (health_pb2.DESCRIPTOR, standard_health.DESCRIPTOR, False),
    ],
    ids=["inference-vs-tritonclient", "health-vs-grpcio-health-checking"],
)
def test_the_messages_and_services_are_the_protocol_s(
    ours: FileDescriptor, theirs: FileDescriptor, superset: bool
) -> None:
    """Triton's proto is a superset of the Open Inference Protocol's (more methods, more
    parameter kinds): every message and field of ours must be there with the same number and
    type. The standard health proto must be exactly ours."""
    assert ours.pool is POOL
    assert theirs.pool is not POOL
    our_messages, their_messages = messages(ours), messages(theirs)
    assert our_messages.keys() <= their_messages.keys()
    if not superset:
        assert our_messages.keys() == their_messages.keys()
    for name, message in our_messages.items():
        our_fields, their_fields = fields(message), fields(their_messages[name])
        if superset:
            assert our_fields.items() <= their_fields.items(), name
        else:
            assert our_fields == their_fields, name
    for name, service in ours.services_by_name.items():
        their_service = theirs.services_by_name[name]
        for method in service.methods:
            their_method = their_service.methods_by_name[method.name]
            assert method.input_type.full_name == their_method.input_type.full_name
            assert method.output_type.full_name == their_method.output_type.full_name
            assert method.server_streaming == their_method.server_streaming


def test_one_message_parses_what_the_other_serialises() -> None:
    ours = grpc_predict_v2_pb2.ModelInferRequest(
        model_name="digits",
        id="42",
        inputs=[
            grpc_predict_v2_pb2.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, 2]
            )
        ],
        raw_input_contents=[b"\x00" * 8],
    )
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.id, list(theirs.inputs[0].shape)) == ("digits", "42", [1, 2])
    assert grpc_predict_v2_pb2.ModelInferRequest.FromString(theirs.SerializeToString()) == ours
