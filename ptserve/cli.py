"""``ptserve serve|info|convert``: map the command line onto Settings, then run the command
(each command's module is imported only when it runs: ``serve`` needs torch, the parser does
not)."""

import argparse
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from ptserve.errors import ModelLoadError
from ptserve.settings import Settings

FLAGS = {"trust_modules": "--trust-module", "cors_origins": "--cors-origin"}
REPEATABLE = {"trust_modules", "cors_origins"}
COMMANDS_WITHOUT = {"info": {"host", "port", "workers"}}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ptserve`` command and ``python -m ptserve``."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "convert":
        from ptserve.convert import ConversionError
        from ptserve.convert.command import convert

        try:
            sys.stdout.write(convert(args["export"], args["out_dir"]))
        except ConversionError as exc:
            parser.exit(1, f"ptserve: {exc}\n")
        return
    as_json = args.pop("json", False)
    try:
        settings = Settings(**args)
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
    convert_cmd = commands.add_parser(
        "convert",
        help="turn a trusted fastai export into a pickle-free folder that ptserve serves",
        description="Load a fastai export (learn.export()) with fastai, in a confined child "
        "process, and write OUT_DIR: the model as a torch.export program and the learner's "
        "preprocessing and decoding as data, checked against learn.predict. Serve it with "
        "'ptserve serve OUT_DIR', without fastai and without unpickling anything. The export "
        "can run code while it loads: convert only files you trust.",
    )
    convert_cmd.add_argument("export", type=Path, metavar="EXPORT", help="the export.pkl")
    convert_cmd.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a new folder")
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
