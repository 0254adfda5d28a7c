"""``ptserve serve|info``: map the command line onto Settings, then hand over to uvicorn."""

import argparse
import json
import os
import signal
import sys
import tempfile
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from ptserve.app import WORKER_SETTINGS_ENV, create_app
from ptserve.errors import ModelLoadError
from ptserve.inspect import describe_file
from ptserve.observability.logs import log_config
from ptserve.observability.metrics import MULTIPROC_ENV
from ptserve.settings import Settings

FLAGS = {"trust_modules": "--trust-module", "cors_origins": "--cors-origin"}
REPEATABLE = {"trust_modules", "cors_origins"}
COMMANDS_WITHOUT = {"info": {"host", "port", "workers"}}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ptserve`` command and ``python -m ptserve``."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    as_json = args.pop("json", False)
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        parser.exit(2, f"ptserve: invalid settings:\n{_settings_errors(exc)}\n")
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        parser.exit(2, f"ptserve: invalid settings: {exc}\n")
    if command == "info":
        try:
            facts = describe_file(settings)
        except ModelLoadError as exc:
            parser.exit(1, f"ptserve: {exc}\n")
        sys.stdout.write(json.dumps(facts, indent=2) if as_json else _text(facts))
        sys.stdout.write("\n")
    else:
        try:
            serve(settings)
        except ValueError as exc:  # e.g. an API key file with no keys
            parser.exit(2, f"ptserve: {exc}\n")


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT (which drain first); exit 0 after
    a clean stop, 3 if the model cannot load."""
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level, settings.log_format),
        "access_log": False,  # ptserve logs each request itself, with its id and timing
    }
    # uvicorn re-raises the stop signal once it has shut down; answered here, the process then
    # exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Each worker is a fresh (spawned) process that rebuilds these settings, loads the model
    # and writes its metrics to the shared multiprocess folder.
    with tempfile.TemporaryDirectory(prefix="ptserve-metrics-") as folder:
        os.environ[MULTIPROC_ENV] = folder
        os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()
        config = uvicorn.Config(
            "ptserve.app:app_from_environment", factory=True, workers=settings.workers, **common
        )
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptserve", description="Serve a saved PyTorch model over HTTP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve a model (default: the bundled example)")
    info_cmd = commands.add_parser("info", help="describe a model file without running it")
    info_cmd.add_argument("--json", action="store_true", help="print JSON")
    for name, command in (("serve", serve_cmd), ("info", info_cmd)):
        nargs = "?" if name == "serve" else None
        command.add_argument(
            "model_path",
            nargs=nargs,
            default=argparse.SUPPRESS,
            metavar="MODEL_PATH",
            help=Settings.model_fields["model_path"].description,
        )
        add_settings_options(command, skip={"model_path", *COMMANDS_WITHOUT.get(name, ())})
    return parser


def add_settings_options(parser: argparse.ArgumentParser, skip: set[str]) -> None:
    """One option per Settings field; only options given on the command line are passed on."""
    for name, field in Settings.model_fields.items():
        if name in skip:
            continue
        kind = _unwrap(field.annotation)
        options: dict[str, Any] = {"default": argparse.SUPPRESS, "help": field.description}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is list:
            options["type"] = get_args(kind)[0]
            options["action" if name in REPEATABLE else "nargs"] = (
                "append" if name in REPEATABLE else "+"
            )
        elif get_origin(kind) is dict:
            options["type"] = json.loads
            options["metavar"] = "JSON"
        elif get_origin(kind) is Literal:
            options["choices"] = get_args(kind)
        parser.add_argument(FLAGS.get(name, "--" + name.replace("_", "-")), dest=name, **options)


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X, and Annotated/constrained types to their origin."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return (
        getattr(annotation, "__origin__", annotation)
        if get_origin(annotation) is None
        else annotation
    )


def _settings_errors(exc: ValidationError) -> str:
    return "\n".join(
        f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
    )


def _text(facts: dict[str, Any]) -> str:
    lines = []
    for key, value in facts.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
