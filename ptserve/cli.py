"""``ptserve serve|info|ray``: map the command line onto Settings, then run the command (each
command's module is imported only when it runs: ``serve`` needs torch, the parser does not)."""

import argparse
import json
import sys
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from ptserve.errors import ModelLoadError
from ptserve.integrations.ray_settings import add_ray_arguments
from ptserve.settings import Settings

FLAGS = {"trust_modules": "--trust-module", "cors_origins": "--cors-origin"}
REPEATABLE = {"trust_modules", "cors_origins"}
# The ray table's options belong to the ray command (add_ray_arguments), where Ray's replicas
# take the place of workers.
COMMANDS_WITHOUT = {
    "serve": {"ray"},
    "info": {"host", "port", "workers", "ray"},
    "ray": {"workers", "ray"},
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ptserve`` command and ``python -m ptserve``."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    as_json = args.pop("json", False)
    print_config = args.pop("print_config", False)
    try:
        settings = Settings(**_nested(args))
    except ValidationError as exc:
        parser.exit(2, f"ptserve: invalid settings:\n{_settings_errors(exc)}\n")
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        parser.exit(2, f"ptserve: invalid settings: {exc}\n")
    if command == "info":
        from ptserve.inspect import describe_file

        try:
            facts = describe_file(settings)
        except ModelLoadError as exc:
            parser.exit(1, f"ptserve: {exc}\n")
        sys.stdout.write(json.dumps(facts, indent=2) if as_json else _text(facts))
        sys.stdout.write("\n")
    elif command == "ray":
        from ptserve.integrations.ray_serve import RayCommandError, run

        try:
            run(settings, print_config=print_config)
        except RayCommandError as exc:
            parser.exit(exc.exit_code, f"ptserve: {exc}\n")
    else:
        from ptserve.server import serve

        try:
            serve(settings)
        except ValueError as exc:  # e.g. an API key file with no keys
            parser.exit(2, f"ptserve: {exc}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptserve", description="Serve a saved PyTorch model over HTTP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve a model (default: the bundled example)")
    info_cmd = commands.add_parser("info", help="describe a model file without running it")
    info_cmd.add_argument("--json", action="store_true", help="print JSON")
    ray_cmd = commands.add_parser("ray", help="serve a model as a Ray Serve application")
    add_ray_arguments(ray_cmd)
    for name, command in (("serve", serve_cmd), ("info", info_cmd), ("ray", ray_cmd)):
        nargs = None if name == "info" else "?"
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


def _nested(args: dict[str, Any]) -> dict[str, Any]:
    """``{"ray.num_replicas": 2}`` -> ``{"ray": {"num_replicas": 2}}``: nested tables' options."""
    nested: dict[str, Any] = {}
    for key, value in args.items():
        table, dot, field = key.partition(".")
        if dot:
            nested.setdefault(table, {})[field] = value
        else:
            nested[key] = value
    return nested


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
