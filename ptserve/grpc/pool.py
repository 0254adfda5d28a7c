"""ptserve's own protobuf descriptor pool, where the generated ``*_pb2`` modules put their
messages.

protobuf's default pool refuses a second file defining a name it already has: tritonclient's
and KServe's stubs define ``inference.ModelInferRequest`` and the rest too, so with the default
pool a process could not import both. Messages from different pools with the same fields are
the same on the wire.
"""

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

POOL = descriptor_pool.DescriptorPool()


def add_file(serialized: bytes) -> tuple[FileDescriptor, dict[str, type[Message]]]:
    """Add one serialized ``FileDescriptorProto``; return it and its top-level message classes
    by name (nested messages and enums are attributes of their classes)."""
    file = POOL.AddSerializedFile(serialized)
    messages = {
        name: message_factory.GetMessageClass(descriptor)
        for name, descriptor in file.message_types_by_name.items()
    }
    return file, messages
