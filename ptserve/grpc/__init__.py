"""Protocol buffers of ptserve's gRPC services: the Open Inference Protocol's
``inference.GRPCInferenceService`` (``grpc_predict_v2.proto``) and the standard health service
``grpc.health.v1.Health`` (``health.proto``).

``*_pb2.py`` and ``*_pb2.pyi`` are generated from the ``.proto`` files by
``python scripts/generate_grpc.py`` (needs ``grpcio-tools``; a test checks they are current).
Their messages live in ptserve's own descriptor pool (``pool.py``), not protobuf's default one,
so that a process may also import Triton's or KServe's stubs, which define the same names.
"""
