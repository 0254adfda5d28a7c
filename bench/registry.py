"""The servers the harness knows: how to start each one and what it stands for."""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bench.config import PTSERVE_CONFIGS, PtserveConfig
from bench.models import ModelArtifact

CommandBuilder = Callable[[ModelArtifact, int], list[str]]
ServerKind = Literal["model", "ceiling"]


@dataclass(frozen=True)
class ServerSpec:
    """A server under test: ``command(model, port)`` starts it on 127.0.0.1:port."""

    name: str
    kind: ServerKind
    description: str
    command: CommandBuilder
    requires: tuple[str, ...] = ()
    predict_path: str = "/predict"
    default: bool = True
    # json: POST the JSON body (wrk); v2-binary: the OIP binary body (wrk); grpc: ModelInfer with
    # raw contents on the server's --grpc-port (bench/grpc_load.py), ready when HTTP answers
    wire: Literal["json", "v2-binary", "grpc"] = "json"
    # Stop by signalling the leader only (it stops its children in order), allowing this long.
    stop_leader_only: bool = False
    stop_timeout_s: float | None = None


def _module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _textbook(workers: int) -> CommandBuilder:
    def build(model: ModelArtifact, port: int) -> list[str]:
        return _module(
            "bench.servers.textbook",
            str(model.path),
            "--port",
            str(port),
            "--sample-rank",
            str(len(model.input_shape)),
            "--workers",
            str(workers),
        )

    return build


def _bare(module: str) -> CommandBuilder:
    def build(model: ModelArtifact, port: int) -> list[str]:
        return _module(module, "--port", str(port))

    return build


def _litserve(*extra: str) -> CommandBuilder:
    def build(model: ModelArtifact, port: int) -> list[str]:
        return _module(
            "bench.servers.litserve_server",
            str(model.path),
            "--port",
            str(port),
            "--max-batch-size",
            "16",
            "--batch-timeout",
            "0.005",
            *extra,
        )

    return build


def _ptserve(config: PtserveConfig) -> CommandBuilder:
    def build(model: ModelArtifact, port: int) -> list[str]:
        return _ptserve_command("serve", model, port, *config.args)

    return build


def _ray(replicas: int) -> CommandBuilder:
    def build(model: ModelArtifact, port: int) -> list[str]:
        return _ptserve_command(
            "ray", model, port, "--no-access-log", "--num-replicas", str(replicas)
        )

    return build


def _ptserve_command(command: str, model: ModelArtifact, port: int, *extra: str) -> list[str]:
    """``ptserve COMMAND`` serving ``model`` as "bench" on loopback ``port``."""
    return _module(
        "ptserve",
        command,
        str(model.path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--name",
        "bench",
        "--input-shape",
        *(str(d) for d in model.input_shape),
        "--input-dtype",
        "float32",
        *extra,
    )


def all_servers() -> tuple[ServerSpec, ...]:
    """Every known server, in the order they are run and plotted."""
    fixed = (
        ServerSpec(
            "bare-starlette",
            "ceiling",
            "Starlette route, constant body",
            _bare("bench.servers.bare_starlette"),
        ),
        ServerSpec(
            "bare-fastapi",
            "ceiling",
            "FastAPI route, constant dict",
            _bare("bench.servers.bare_fastapi"),
        ),
        ServerSpec(
            "textbook", "model", "tutorial FastAPI + Pydantic server, 1 worker", _textbook(1)
        ),
        ServerSpec(
            "textbook-w2",
            "model",
            "tutorial server, 2 uvicorn workers",
            _textbook(2),
            default=False,
        ),
        ServerSpec(
            "litserve",
            "model",
            "LitServe, batch<=16, 5 ms timeout, 1 CPU worker",
            _litserve(),
            requires=("litserve",),
        ),
        ServerSpec(
            "litserve-t1",
            "model",
            "LitServe as above, 1 torch thread in its inference worker",
            _litserve("--torch-threads", "1"),
            requires=("litserve",),
            default=False,
        ),
    )
    ptserve = tuple(
        ServerSpec(
            c.name,
            "model",
            f"ptserve {' '.join(c.args) or '(defaults)'}",
            _ptserve(c),
            requires=("ptserve",),
            default=c.default,
        )
        for c in PTSERVE_CONFIGS
    )
    v2 = tuple(
        ServerSpec(
            f"{c.name}-v2",
            "model",
            f"{c.name} over the Open Inference Protocol, binary tensors",
            _ptserve(c),
            requires=("ptserve",),
            predict_path="/v2/models/bench/infer",
            default=c.default,
            wire="v2-binary",
        )
        for c in PTSERVE_CONFIGS
        if c.name in ("ptserve", "ptserve-b8t2", "ptserve-fast")
    )
    # ptserve on a local Ray cluster started by the command, behind Ray Serve's HTTP proxy; each
    # replica reserves 1 CPU (1 torch thread). SIGTERM to the whole group would kill Ray's own
    # processes before the replicas drain: the command is signalled alone.
    ray = tuple(
        ServerSpec(
            f"ray-{replicas}",
            "model",
            f"ptserve ray --num-replicas {replicas}: Ray Serve's proxy in front",
            _ray(replicas),
            requires=("ptserve", "ray"),
            default=False,
            stop_leader_only=True,
            stop_timeout_s=90.0,
        )
        for replicas in (1, 2)
    )
    grpc = tuple(
        ServerSpec(
            f"{c.name}-grpc",
            "model",
            f"{c.name} over the Open Inference Protocol over gRPC, raw tensors",
            _ptserve(c),
            requires=("ptserve", "grpc"),
            default=c.default,
            wire="grpc",
        )
        for c in PTSERVE_CONFIGS
        if c.name in ("ptserve", "ptserve-b8t2", "ptserve-fast")
    )
    return (*fixed, *ptserve, *v2, *grpc, *ray)


def select_servers(names: tuple[str, ...] | None) -> tuple[ServerSpec, ...]:
    """The named servers (all defaults when ``names`` is None), in registry order."""
    known = all_servers()
    if names is None:
        return tuple(s for s in known if s.default)
    unknown = set(names) - {s.name for s in known}
    if unknown:
        raise ValueError(f"unknown server(s): {', '.join(sorted(unknown))}")
    return tuple(s for s in known if s.name in names)
