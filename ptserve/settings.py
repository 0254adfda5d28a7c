"""One validated settings tree. Precedence: CLI > env ``PTSERVE_*`` > config file > defaults."""

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Self, get_args

import pydantic
import yaml
from pydantic import FilePath, PositiveInt, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ptserve.dtypes import DType
from ptserve.integrations.ray_settings import RaySettings

EXAMPLE_MODEL = Path(__file__).with_name("example") / "digits.pt"
ModelFormat = Literal[
    "pickle", "state_dict", "safetensors", "torchscript", "export", "fastai", "converted"
]
ENV_PREFIX = "PTSERVE_"
# The sections of ``--help``, in order; each field names its own with ``group=``.
Group = Literal[
    "model", "signature", "outputs", "images", "batching", "server", "security", "observability"
]


def Field(default: Any = PydanticUndefined, *, group: Group | None = None, **kwargs: Any) -> Any:
    """pydantic's ``Field``, plus ``group``: the section of ``--help`` that lists the option."""
    extra: JsonDict | None = {"group": group} if group is not None else None
    return pydantic.Field(default, json_schema_extra=extra, **kwargs)


def group_of(field: FieldInfo) -> str:
    """The ``--help`` section of a settings field ("other" for one that names none)."""
    extra = field.json_schema_extra
    return str(extra.get("group", "other")) if isinstance(extra, dict) else "other"


class Settings(BaseSettings):
    """Everything ptserve can be told; each field is also a CLI option and a config-file key."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model_path: Path = Field(
        EXAMPLE_MODEL,
        description="The model file to serve, or a model repository folder holding "
        "NAME/VERSION/FILE (see README).",
        group="model",
    )
    config: Path | None = Field(None, description="A TOML or YAML file of settings.", group="model")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Model name in URLs (default: file stem).",
        group="model",
    )
    format: ModelFormat | None = Field(
        None,
        description="Force the model format instead of detecting it from the content.",
        group="model",
    )
    device: str = Field(
        "cpu", description="Torch device to run on: cpu, cuda, cuda:1, mps.", group="model"
    )
    model_class: str | None = Field(
        None,
        description="module:Class that a state_dict or safetensors file is loaded into.",
        group="model",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the model class constructor.",
        group="model",
    )
    input_shape: list[int] | dict[str, list[int]] | None = Field(
        None,
        description="Per-sample input shape, -1 for a variable dim: 3 64 64 for one input; "
        "NAME=DIMS for each of several inputs, in forward's order (e.g. a=6 b=3,4).",
        group="signature",
    )
    input_dtype: DType | dict[str, DType] | None = Field(
        None,
        description="Input dtype, one for every input (default: the weights' dtype, else "
        "float32), or NAME=DTYPE per input (e.g. a=float32 b=int64).",
        group="signature",
    )
    input_names: list[str] | None = Field(
        None,
        description="Names of the model's inputs, in forward's order (default: input, or the "
        "names the file or --input-shape gives).",
        group="signature",
    )
    output_names: list[str] | None = Field(
        None, description="Names of the model's outputs.", group="signature"
    )
    example_input: Path | None = Field(
        None,
        description="An example batch (.npy, or .npz for several inputs) giving the signature; "
        "default: <model stem>.example.npy or .npz beside the model.",
        group="signature",
    )
    labels: Path | None = Field(
        None,
        description="Class labels (.txt one per line, or a JSON list); "
        "default: labels.txt or labels.json beside the model.",
        group="outputs",
    )
    top_k: PositiveInt | None = Field(
        None,
        description="Return the k best labels with each prediction by default.",
        group="outputs",
    )
    output_activation: Literal["softmax", "sigmoid", "none"] = Field(
        "softmax",
        description="How a classifier's outputs become label scores: softmax (one class), "
        "sigmoid (independent classes, multi-label) or none (the outputs are scores already).",
        group="outputs",
    )
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Multi-label: also return every label whose score reaches this threshold.",
        group="outputs",
    )
    handler: str | None = Field(
        None,
        description="User hooks: a path.py file or module[:object] with optional "
        "preprocess(instances) and postprocess(outputs) functions.",
        group="model",
    )
    image_mode: Literal["RGB", "L"] | None = Field(
        None,
        description="Colour mode uploaded images are converted to (default: RGB for a 3-channel "
        "input, L for a 1-channel one).",
        group="images",
    )
    image_resize: PositiveInt | None = Field(
        None,
        description="Resize an image's shorter side to this many pixels, then centre-crop it to "
        "the input's height and width (default: resize straight to height and width).",
        group="images",
    )
    image_mean: list[float] = Field(
        default_factory=lambda: [0.0],
        description="Per-channel mean subtracted from pixels scaled to 0-1 (one value, or one "
        "per channel, e.g. 0.485 0.456 0.406).",
        group="images",
    )
    image_std: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Per-channel standard deviation pixels are divided by, after the mean.",
        group="images",
    )
    image_layout: Literal["CHW", "HWC"] = Field(
        "CHW",
        description="Channel order of the model's image input: channels first or last.",
        group="images",
    )
    max_image_pixels: PositiveInt = Field(
        25_000_000,
        description="Largest image (width x height) accepted; bigger ones are refused before "
        "they are decoded (decompression bombs).",
        group="images",
    )
    allow_nan: bool = Field(
        False, description="Accept NaN and Infinity in inputs.", group="signature"
    )
    max_instances: PositiveInt = Field(
        1024, description="Most instances in one request.", group="batching"
    )
    image_budget_pixels: PositiveInt | None = Field(
        None,
        description="Decoded image pixels in flight per worker (about 4-12 bytes each while an "
        "image is decoded and scaled); beyond it image requests wait, up to timeout_ms, then "
        "get 503. Default: a quarter of the machine's memory (or container limit) at 12 bytes "
        "a pixel, divided among the workers, and at least max_image_pixels.",
        group="images",
    )
    max_batch_size: PositiveInt = Field(
        32,
        description="Most samples the server batches into one forward pass.",
        group="batching",
    )
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a queued sample waits for a batch to fill while more requests are "
        "arriving; with nothing else arriving a batch runs at once.",
        group="batching",
    )
    max_queue: PositiveInt = Field(
        4096,
        description="Most samples queued per model; beyond it requests get 503.",
        group="batching",
    )
    admission_wait_ms: float = Field(
        1000,
        ge=0,
        description="When the queue is full, how long a new request may wait (its body unread) "
        "for room before it gets 503 with Retry-After.",
        group="batching",
    )
    timeout_ms: float = Field(
        30_000,
        gt=0,
        description="Default deadline of a request in the queue (504 when it passes); a request "
        "may ask for another with the X-Request-Timeout-Ms header.",
        group="batching",
    )
    execution: Literal["auto", "thread", "inline"] = Field(
        "auto",
        description="Where the model runs: on a dedicated inference thread, or inline on the "
        "event loop (cheaper for models faster than a thread hop); auto picks inline when a "
        "full batch takes under 1 ms at warm-up.",
        group="batching",
    )
    inference_threads: PositiveInt | None = Field(
        None,
        description="Batches in the model at once, each on its own inference thread (with "
        "execution=thread); default: chosen at warm-up from timed passes (see README).",
        group="batching",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model at start-up (slower start; see README).",
        group="model",
    )
    torch_threads: PositiveInt | None = Field(
        None,
        description="Torch intra-op threads per worker (default: chosen at warm-up from timed "
        "passes; cores / workers - 1 for a model that runs on the event loop).",
        group="batching",
    )
    trust_modules: list[str] = Field(
        default_factory=list,
        description="Modules whose classes a pickled model may use (repeatable).",
        group="security",
    )
    trust_pickle: bool = Field(
        False,
        description="Trust the file: unpickle its pickled parts in full (a pickle can run code) "
        "and load .pt2 or TorchScript parts that run code. Only for files you trust; see the "
        "README's safety section.",
        group="security",
    )
    max_body_bytes: PositiveInt = Field(
        16 * 1024 * 1024,
        description="Largest request body; bigger ones get 413 unread.",
        group="security",
    )
    api_key_file: FilePath | None = Field(
        None,
        description="File of API keys, one per line; requests then need one (Authorization: "
        "Bearer KEY or X-API-Key). Re-read when it changes and on SIGHUP.",
        group="security",
    )
    protect_health: bool = Field(
        False, description="Require an API key for health endpoints.", group="security"
    )
    protect_metrics: bool = Field(
        False, description="Require an API key for /metrics.", group="security"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS (none: CORS off).",
        group="security",
    )
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, how long to keep accepting and serving new requests normally "
        "(readiness already 503) while load balancers stop routing here; 0 skips it, and so "
        "does SIGINT.",
        group="server",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Once the server stops accepting, how long accepted requests may take to "
        "finish before they are cut off.",
        group="server",
    )
    keep_alive_s: PositiveInt = Field(
        5,
        description="Idle kept-alive connections are closed after this many seconds; behind a "
        "load balancer that reuses connections, make it longer than the balancer's idle "
        "timeout.",
        group="server",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's line and headers must arrive within this many seconds of the "
        "connection opening or of the request's first byte; else 408 and the connection closes.",
        group="server",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request's whole body must arrive within this many seconds of its "
        "headers; else 408 and the connection closes.",
        group="server",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines as text or JSON; auto: text when stderr is a terminal, else JSON.",
        group="observability",
    )
    access_log: bool = Field(True, description="Log one line per request.", group="observability")
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans per request (needs the otel extra).",
        group="observability",
    )
    host: str = Field("127.0.0.1", description="Address to bind.", group="server")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.", group="server")
    workers: PositiveInt = Field(
        1, description="Server processes sharing the port.", group="server"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info",
        description="Log level.",
        group="observability",
    )
    ray: RaySettings = Field(
        default_factory=RaySettings,
        description="How `ptserve ray` runs the app on Ray Serve: replicas, resources, cluster.",
        group="server",
    )

    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve the Open Inference Protocol over gRPC on this port, on the same "
        "host (off when unset; needs the grpc extra).",
        group="server",
    )
    grpc_max_message_bytes: PositiveInt = Field(
        64 * 1024 * 1024,
        description="Largest gRPC message received or sent (default 64 MiB: a batch of 100 "
        "224x224x3 float32 images is 60 MB); bigger ones get RESOURCE_EXHAUSTED.",
        group="server",
    )

    default_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The model POST /predict serves when the repository holds several "
        "(default: the only model at start-up).",
        group="model",
    )
    watch: bool = Field(
        False,
        description="Poll the model folder (or file) for new, changed and removed versions; "
        "load each beside the serving one, then swap it in without a restart.",
        group="model",
    )
    watch_interval_s: float = Field(
        2.0, gt=0, description="How often --watch looks at the folder, in seconds.", group="model"
    )

    @field_validator("input_shape", mode="before")
    @classmethod
    def _parse_shapes(cls, value: Any) -> Any:
        return per_input(value, _dims)

    @field_validator("input_dtype", mode="before")
    @classmethod
    def _parse_dtypes(cls, value: Any) -> Any:
        return per_input(value, _dtype)

    @field_validator("input_names", "output_names", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    @field_validator("input_shape")
    @classmethod
    def _check_shape(
        cls, shape: list[int] | dict[str, list[int]] | None
    ) -> list[int] | dict[str, list[int]] | None:
        shapes = shape.values() if isinstance(shape, dict) else [shape or []]
        if any(d == 0 or d < -1 for dims in shapes for d in dims):
            raise ValueError("dims must be positive, or -1 for a variable dim")
        return shape

    @model_validator(mode="after")
    def _check_inputs(self) -> Self:
        """The signature flags must describe the same inputs."""
        names, shape, dtype = self.input_names, self.input_shape, self.input_dtype
        if names is not None and len(set(names)) != len(names):
            raise ValueError(f"input_names repeats a name: {' '.join(names)}")
        if isinstance(shape, list) and names is not None and len(names) > 1:
            raise ValueError(
                f"{len(names)} input names ({', '.join(names)}) but one input shape; give a "
                f"shape per input, e.g. --input-shape {' '.join(n + '=DIMS' for n in names)}"
            )
        if isinstance(shape, dict) and names is not None and set(names) != set(shape):
            raise ValueError(
                f"input_names ({', '.join(names)}) and input_shape ({', '.join(shape)}) name "
                "different inputs"
            )
        known = self.declared_inputs
        if isinstance(dtype, dict) and known is not None and not set(dtype) <= set(known):
            unknown = ", ".join(n for n in dtype if n not in known)
            raise ValueError(
                f"input_dtype names {unknown}, which is not an input ({', '.join(known)})"
            )
        return self

    @property
    def declared_inputs(self) -> list[str] | None:
        """The inputs' names, in order, as far as the settings say (None: from the model)."""
        if self.input_names is not None:
            return self.input_names
        if isinstance(self.input_shape, dict):
            return list(self.input_shape)
        return ["input"] if self.input_shape is not None else None

    @field_validator("image_std")
    @classmethod
    def _check_std(cls, std: list[float]) -> list[float]:
        if not std or any(v <= 0 for v in std):
            raise ValueError("standard deviations must be positive")
        return std

    @field_validator("image_mean")
    @classmethod
    def _check_mean(cls, mean: list[float]) -> list[float]:
        if not mean:
            raise ValueError("give one mean, or one per channel")
        return mean

    @property
    def model_name(self) -> str:
        return self.name or self.model_path.stem

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(init_settings, InitSettingsSource)
        return init_settings, env_settings, ConfigFileSource(settings_cls, init_settings)


class ConfigFileSource(PydanticBaseSettingsSource):
    """Settings from the file named by the ``config`` setting (given on the CLI or in env)."""

    def __init__(self, settings_cls: type[BaseSettings], init: InitSettingsSource) -> None:
        super().__init__(settings_cls)
        self.path = init.init_kwargs.get("config") or os.environ.get(ENV_PREFIX + "CONFIG")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        if not self.path:
            return {}
        path = Path(self.path)
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected a table of settings")
        return data


def per_input(value: Any, parse: Callable[[list[str]], Any]) -> Any:
    """Tokens from the command line or an environment variable (``3 64 64``, ``a=6 b=3,4``,
    ``float32``, ``a=float32 b=int64``) as a value or a dict of values by input name. JSON
    values (config files, JSON in env) pass through to pydantic's own validation."""
    if isinstance(value, str):
        value = value.split()
    elif isinstance(value, int):  # PTSERVE_INPUT_SHAPE=6 reads as the JSON number 6
        value = [str(value)]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        return value
    named = [t.partition("=") for t in value]
    if not any(sep for _, sep, _ in named):
        return parse(value)
    if not all(name and sep for name, sep, _ in named):
        raise ValueError(
            f"{' '.join(value)!r}: give NAME=VALUE for every input (e.g. a=6 b=3,4), or one "
            "value without names"
        )
    values = {name: parse([given]) for name, _, given in named}
    if len(values) != len(named):
        raise ValueError(f"{' '.join(value)!r}: an input is named twice")
    return values


def _dims(tokens: list[str]) -> list[int]:
    """``["3", "64", "64"]`` or ``["3,64,64"]`` -> [3, 64, 64]."""
    parts = [part for token in tokens for part in token.split(",")]
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"{' '.join(tokens)!r}: dims must be whole numbers") from None


def _dtype(tokens: list[str]) -> str:
    if len(tokens) != 1:
        raise ValueError(
            f"{' '.join(tokens)!r}: give one dtype for every input, or NAME=DTYPE for each"
        )
    if tokens[0] not in get_args(DType):
        raise ValueError(f"unknown dtype {tokens[0]!r}; one of {', '.join(get_args(DType))}")
    return tokens[0]


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``PTSERVE_*`` variable that names no setting (a typo would otherwise
    be ignored without a word), with the closest setting's variable."""
    known = [name.upper() for name in Settings.model_fields]
    warnings = []
    for variable in sorted(environ):
        name = variable.upper().removeprefix(ENV_PREFIX)
        if name == variable.upper() or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        warnings.append(f"{variable} is not a ptserve setting and is ignored{hint}")
    return warnings
