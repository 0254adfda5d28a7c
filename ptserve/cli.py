"""``ptserve serve|info|convert|ray``: map the command line onto Settings, then run the command
(each command's module is imported only when it runs: ``serve`` needs torch, the parser does
not).

A new command is one more ``commands.add_parser(...)`` with ``add_settings_options`` in
``build_parser`` and one more lazy branch in ``main``."""

import argparse
import difflib
import json
import os
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from ptserve.errors import ModelLoadError
from ptserve.integrations.ray_settings import add_ray_arguments
from ptserve.settings import EXAMPLE_MODEL, Group, Settings, group_of, unknown_environment

FLAGS = {"trust_modules": "--trust-module", "cors_origins": "--cors-origin"}
REPEATABLE = {"trust_modules", "cors_origins"}
METAVARS = {
    "config": "FILE", "model_class": "MODULE:CLASS", "example_input": "FILE", "labels": "FILE",
    "handler": "HOOKS", "trust_modules": "MODULE", "api_key_file": "FILE", "cors_origins": "ORIGIN",
}  # fmt: skip
# The ray table's options belong to the ray command (add_ray_arguments), where Ray's replicas
# take the place of workers.
COMMANDS_WITHOUT = {
    "serve": {"ray"},
    "info": {"host", "port", "workers", "ray"},
    "ray": {"workers", "ray"},
}
GROUP_TITLES: dict[str, str] = {
    "model": "model (what to serve and how to load it)",
    "signature": "signature (the model's inputs and outputs)",
    "outputs": "outputs (labels and scores)",
    "images": "images (for models that take pictures)",
    "batching": "batching and execution",
    "server": "server",
    "security": "security (what a model file may run; who may call)",
    "observability": "observability (logs, traces)",
    "other": "other options",
}
SETTINGS_NOTE = (
    "Every option is also an environment variable PTSERVE_<NAME> and a config-file key "
    "<name> (e.g. --max-batch-size: PTSERVE_MAX_BATCH_SIZE, max_batch_size); the command "
    "line wins over the environment, which wins over the config file."
)


class Parser(argparse.ArgumentParser):
    """argparse that answers a mistyped option, command or choice with "did you mean"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)}\n")

    def _suggestion(self, message: str) -> str:
        if message.startswith("unrecognized arguments:"):
            options = list(self._option_string_actions)
            typed = [t.partition("=")[0] for t in message.split()[2:] if t.startswith("-")]
            guesses = [g for t in typed for g in difflib.get_close_matches(t, options, n=1)]
        elif choice := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
            choices = re.findall(r"'([^']*)'", choice[2])
            guesses = difflib.get_close_matches(choice[1], choices, n=1)
        else:
            return ""
        if not guesses:
            return f" (see {self.prog} --help)"
        return f" (did you mean {', '.join(dict.fromkeys(guesses))}?)"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ptserve`` command and ``python -m ptserve``."""
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(argv)
    args = vars(namespace)
    command = args.pop("command")
    if unknown:  # reported by the command's own parser, with its options to suggest from
        _command_parser(parser, command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if command == "convert":
        from ptserve.convert import ConversionError
        from ptserve.convert.command import convert

        try:
            sys.stdout.write(convert(args["export"], args["out_dir"]))
        except ConversionError as exc:
            parser.exit(1, f"ptserve: {exc}\n")
        return
    as_json = args.pop("json", False)
    load = args.pop("load", False)
    print_config = args.pop("print_config", False)
    for warning in unknown_environment(os.environ):
        sys.stderr.write(f"ptserve: warning: {warning}\n")
    try:
        settings = Settings(**_nested(args))
    except ValidationError as exc:
        parser.exit(2, f"ptserve: invalid settings:\n{_settings_errors(exc)}\n")
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        parser.exit(2, f"ptserve: invalid settings: {exc}\n")
    if command == "info":
        from ptserve.inspect import describe_file

        try:
            described = describe_file(settings, load)
        except ModelLoadError as exc:
            parser.exit(1, f"ptserve: {exc}\n")
        facts = described.facts
        sys.stdout.write(json.dumps(facts, indent=2) if as_json else _text(facts))
        sys.stdout.write("\n")
        if described.refusal is not None:
            parser.exit(1, f"ptserve: serve would refuse it: {described.refusal}\n")
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
    parser = Parser(
        prog="ptserve", description="Serve a saved PyTorch model over HTTP.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve",
        help="serve a model (default: the bundled example)",
        usage="%(prog)s [MODEL_PATH] [options]",
        description="Serve a model over HTTP. " + SETTINGS_NOTE,
        allow_abbrev=False,
    )
    info_cmd = commands.add_parser(
        "info",
        help="describe a model file without running it",
        usage="%(prog)s MODEL_PATH [options]",
        description="Describe a model file without running code from it.",
        allow_abbrev=False,
    )
    info_cmd.add_argument("--json", action="store_true", help="print JSON")
    info_cmd.add_argument(
        "--load",
        action="store_true",
        help="also load the model, under serve's safety rules, for its parameter count, "
        "outputs and forward arity (without it nothing in the file is unpickled or run)",
    )
    convert_cmd = commands.add_parser(
        "convert",
        help="turn a trusted fastai export into a pickle-free folder that ptserve serves",
        usage="%(prog)s EXPORT OUT_DIR",
        description="Load a fastai export (learn.export()) with fastai, in a confined child "
        "process, and write OUT_DIR: the model as a torch.export program and the learner's "
        "preprocessing and decoding as data, checked against learn.predict. Serve it with "
        "'ptserve serve OUT_DIR', without fastai and without unpickling anything. The export "
        "can run code while it loads: convert only files you trust.",
        allow_abbrev=False,
    )
    convert_cmd.add_argument("export", type=Path, metavar="EXPORT", help="the export.pkl")
    convert_cmd.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a new folder")
    ray_cmd = commands.add_parser(
        "ray",
        help="serve a model as a Ray Serve application",
        usage="%(prog)s [MODEL_PATH] [options]",
        description="Serve a model as a Ray Serve application: the same app, in replicas on a "
        "local or existing Ray cluster. " + SETTINGS_NOTE,
        allow_abbrev=False,
    )
    add_ray_arguments(ray_cmd)
    for name, command in (("serve", serve_cmd), ("info", info_cmd), ("ray", ray_cmd)):
        groups = setting_groups(command)
        groups["model"].add_argument(
            "model_path",
            nargs=None if name == "info" else "?",
            default=argparse.SUPPRESS,
            metavar="MODEL_PATH",
            help=_help("model_path", Settings.model_fields["model_path"]),
        )
        add_settings_options(command, {"model_path", *COMMANDS_WITHOUT.get(name, ())}, groups)
    return parser


def setting_groups(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One ``--help`` section per settings group, in order (empty ones are not shown)."""
    return {g: parser.add_argument_group(GROUP_TITLES[g]) for g in [*get_args(Group), "other"]}


def add_settings_options(
    parser: argparse.ArgumentParser,
    skip: set[str],
    groups: dict[str, argparse._ArgumentGroup] | None = None,
) -> None:
    """One option per Settings field, in its field's ``--help`` section; only options given on
    the command line are passed on."""
    groups = groups or setting_groups(parser)
    for name, field in Settings.model_fields.items():
        if name in skip:
            continue
        kind = _unwrap(field.annotation)
        options: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(name, field)}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) in (Union, types.UnionType):  # e.g. one shape, or NAME=DIMS each
            options["nargs"] = "+"
            options["metavar"] = name.rpartition("_")[2].upper()
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
        if name in METAVARS:
            options["metavar"] = METAVARS[name]
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        groups[group_of(field)].add_argument(flag, dest=name, **options)


def _help(name: str, field: FieldInfo) -> str:
    """The field's description, with its default unless the description states it."""
    description = field.description or ""
    default = field.get_default(call_default_factory=True)
    if "default" in description or default is None or default in ([], {}):
        return description
    if default == EXAMPLE_MODEL:
        shown = "the bundled example"
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, list):
        shown = " ".join(map(str, default))
    else:
        shown = str(default)
    return f"{description} (default: {shown})"


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = commands.choices[command]
    return chosen


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
    """``X | None`` -> X, and Annotated/constrained types to their origin; a union of several
    kinds (``list[int] | dict[str, list[int]]``) stays a union."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        if len(kinds) > 1:
            return annotation
        annotation = kinds[0]
    return (
        getattr(annotation, "__origin__", annotation)
        if get_origin(annotation) is None
        else annotation
    )


def _settings_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    return "\n".join(lines)


def _text(facts: dict[str, Any]) -> str:
    lines = []
    for key, value in facts.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
