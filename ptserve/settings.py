"""One validated settings tree. Precedence: CLI > env ``PTSERVE_*`` > config file > defaults."""

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, FilePath, PositiveInt, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ptserve.signature import DType

EXAMPLE_MODEL = Path(__file__).with_name("example") / "digits.pt"
ModelFormat = Literal["pickle", "state_dict", "safetensors", "torchscript", "export", "fastai"]


class Settings(BaseSettings):
    """Everything ptserve can be told; each field is also a CLI option and a config-file key."""

    model_config = SettingsConfigDict(env_prefix="PTSERVE_", extra="forbid", frozen=True)

    model_path: Path = Field(
        EXAMPLE_MODEL,
        description="The model file to serve, or a model repository folder holding "
        "NAME/VERSION/FILE (see README).",
    )
    config: Path | None = Field(None, description="A TOML or YAML file of settings.")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="Model name in URLs (default: file stem)."
    )
    format: ModelFormat | None = Field(
        None, description="Force the model format instead of detecting it from the content."
    )
    device: str = Field("cpu", description="Torch device to run on: cpu, cuda, cuda:1, mps.")
    model_class: str | None = Field(
        None, description="module:Class that a state_dict or safetensors file is loaded into."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the model class constructor."
    )
    input_shape: list[int] | None = Field(
        None, description="Per-sample input shape, -1 for a variable dim (e.g. 3 64 64)."
    )
    input_dtype: DType | None = Field(None, description="Input dtype (default float32).")
    input_names: list[str] | None = Field(None, description="Names of the model's inputs.")
    output_names: list[str] | None = Field(None, description="Names of the model's outputs.")
    example_input: Path | None = Field(
        None,
        description="An example batch (.npy, or .npz for several inputs) giving the signature; "
        "default: <model stem>.example.npy or .npz beside the model.",
    )
    labels: Path | None = Field(
        None,
        description="Class labels (.txt one per line, or a JSON list); "
        "default: labels.txt or labels.json beside the model.",
    )
    top_k: PositiveInt | None = Field(
        None, description="Return the k best labels with each prediction by default."
    )
    output_activation: Literal["softmax", "sigmoid", "none"] = Field(
        "softmax",
        description="How a classifier's outputs become label scores: softmax (one class), "
        "sigmoid (independent classes, multi-label) or none (the outputs are scores already).",
    )
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Multi-label: also return every label whose score reaches this threshold.",
    )
    handler: str | None = Field(
        None,
        description="User hooks: a path.py file or module[:object] with optional "
        "preprocess(instances) and postprocess(outputs) functions.",
    )
    image_mode: Literal["RGB", "L"] | None = Field(
        None,
        description="Colour mode uploaded images are converted to (default: RGB for a 3-channel "
        "input, L for a 1-channel one).",
    )
    image_resize: PositiveInt | None = Field(
        None,
        description="Resize an image's shorter side to this many pixels, then centre-crop it to "
        "the input's height and width (default: resize straight to height and width).",
    )
    image_mean: list[float] = Field(
        default_factory=lambda: [0.0],
        description="Per-channel mean subtracted from pixels scaled to 0-1 (one value, or one "
        "per channel, e.g. 0.485 0.456 0.406).",
    )
    image_std: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Per-channel standard deviation pixels are divided by, after the mean.",
    )
    image_layout: Literal["CHW", "HWC"] = Field(
        "CHW", description="Channel order of the model's image input: channels first or last."
    )
    max_image_pixels: PositiveInt = Field(
        25_000_000,
        description="Largest image (width x height) accepted; bigger ones are refused before "
        "they are decoded (decompression bombs).",
    )
    allow_nan: bool = Field(False, description="Accept NaN and Infinity in inputs.")
    max_instances: PositiveInt = Field(1024, description="Most instances in one request.")
    max_batch_size: PositiveInt = Field(
        32, description="Most samples the server batches into one forward pass."
    )
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a queued sample waits for a batch to fill while more requests are "
        "arriving; with nothing else arriving a batch runs at once.",
    )
    max_queue: PositiveInt = Field(
        4096, description="Most samples queued per model; beyond it requests get 503."
    )
    timeout_ms: float = Field(
        30_000,
        gt=0,
        description="Default deadline of a request in the queue (504 when it passes); a request "
        "may ask for another with the X-Request-Timeout-Ms header.",
    )
    execution: Literal["auto", "thread", "inline"] = Field(
        "auto",
        description="Where the model runs: on a dedicated inference thread, or inline on the "
        "event loop (cheaper for models faster than a thread hop); auto picks inline when a "
        "full batch takes under 1 ms at warm-up.",
    )
    inference_threads: PositiveInt | None = Field(
        None,
        description="Batches in the model at once, each on its own inference thread (with "
        "execution=thread); default: chosen at warm-up from timed passes (see README).",
    )
    compile: bool = Field(
        False, description="torch.compile the model at start-up (slower start; see README)."
    )
    torch_threads: PositiveInt | None = Field(
        None,
        description="Torch intra-op threads per worker (default: chosen at warm-up from timed "
        "passes; cores / workers - 1 for a model that runs on the event loop).",
    )
    trust_modules: list[str] = Field(
        default_factory=list,
        description="Modules whose classes a pickled model may use (repeatable).",
    )
    trust_pickle: bool = Field(
        False,
        description="Trust the file's pickled parts: unpickle them in full (a pickle can run "
        "code). Only for files you trust; see the README's safety section.",
    )
    max_body_bytes: PositiveInt = Field(
        16 * 1024 * 1024, description="Largest request body; bigger ones get 413 unread."
    )
    api_key_file: FilePath | None = Field(
        None,
        description="File of API keys, one per line; requests then need one (Authorization: "
        "Bearer KEY or X-API-Key). Re-read when it changes and on SIGHUP.",
    )
    protect_health: bool = Field(False, description="Require an API key for health endpoints.")
    protect_metrics: bool = Field(False, description="Require an API key for /metrics.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (none: CORS off)."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long to let accepted work finish."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    access_log: bool = Field(True, description="Log one line per request.")
    tracing: bool = Field(
        False, description="OpenTelemetry spans per request (needs the otel extra)."
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    workers: PositiveInt = Field(1, description="Server processes sharing the port.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )
    default_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The model POST /predict serves when the repository holds several "
        "(default: the only model at start-up).",
    )
    watch: bool = Field(
        False,
        description="Poll the model folder (or file) for new, changed and removed versions; "
        "load each beside the serving one, then swap it in without a restart.",
    )
    watch_interval_s: float = Field(
        2.0, gt=0, description="How often --watch looks at the folder, in seconds."
    )

    @field_validator("input_shape")
    @classmethod
    def _check_shape(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and any(d == 0 or d < -1 for d in shape):
            raise ValueError("dims must be positive, or -1 for a variable dim")
        return shape

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
        self.path = init.init_kwargs.get("config") or os.environ.get("PTSERVE_CONFIG")

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
