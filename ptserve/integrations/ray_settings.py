"""The ``ray`` table of the settings tree: how ``ptserve ray`` runs the app on Ray Serve.

Plain pydantic, no Ray import: the settings and the CLI parser load without Ray installed.
On the command line the fields are ``ptserve ray`` options (``--num-replicas``, ...); in a
config file they are a ``ray`` table; in the environment, ``PTSERVE_RAY`` as JSON.
"""

import argparse
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

AUTOSCALING = ("min_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s")


class RaySettings(BaseModel):
    """Replicas, resources and the cluster of a Ray Serve deployment of ptserve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None,
        description="Ray cluster to join (host:port, ray://host:port or auto); default: "
        "RAY_ADDRESS, else a local cluster that lives as long as the command.",
    )
    num_replicas: PositiveInt | None = Field(
        None, description="Fixed number of replicas (default 1; not with autoscaling)."
    )
    min_replicas: NonNegativeInt | None = Field(
        None, description="Autoscaling: fewest replicas (default 1; 0 scales to zero)."
    )
    max_replicas: PositiveInt | None = Field(
        None, description="Autoscaling: most replicas; giving it turns the autoscaler on."
    )
    target_ongoing_requests: PositiveFloat | None = Field(
        None,
        description="Autoscaling: requests in flight per replica to aim for "
        "(default: max_batch_size, a full batch per replica).",
    )
    upscale_delay_s: NonNegativeFloat | None = Field(
        None, description="Autoscaling: how long load must stay high before adding (Ray: 30)."
    )
    downscale_delay_s: NonNegativeFloat | None = Field(
        None, description="Autoscaling: how long load must stay low before removing (Ray: 600)."
    )
    replica_cpus: PositiveFloat = Field(
        1.0,
        description="CPUs reserved per replica; its torch threads follow (CPUs - 1, at "
        "least 1) unless torch_threads is set.",
    )
    replica_gpus: NonNegativeFloat = Field(0.0, description="GPUs reserved per replica.")
    max_ongoing_requests: PositiveInt | None = Field(
        None,
        description="Most requests Ray sends one replica at once (default: 2 x "
        "max_batch_size, so batches can fill; Ray's own default of 5 would cap them).",
    )

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> "RaySettings":
        autoscaling = [name for name in AUTOSCALING if getattr(self, name) is not None]
        if self.num_replicas is not None and (autoscaling or self.max_replicas is not None):
            raise ValueError("give either num_replicas or autoscaling options, not both")
        if autoscaling and self.max_replicas is None:
            raise ValueError(f"{autoscaling[0]} is an autoscaling option: give max_replicas too")
        if self.max_replicas is not None and (self.min_replicas or 0) > self.max_replicas:
            raise ValueError("min_replicas is more than max_replicas")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ptserve ray`` options: one per RaySettings field (stored as ``ray.<field>``,
    which the CLI nests into the ``ray`` table), plus ``--print-config``."""
    group = parser.add_argument_group("Ray Serve")
    for name, field in RaySettings.model_fields.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"ray.{name}",
            metavar=name.upper(),
            type=_scalar(field.annotation),
            default=argparse.SUPPRESS,
            help=field.description,
        )
    group.add_argument(
        "--print-config",
        action="store_true",
        help="Write the Ray Serve config (YAML, for `serve deploy`) of these settings and exit.",
    )


def _scalar(annotation: Any) -> type:
    """``PositiveInt | None`` -> int: the type argparse converts the option's text to."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    assert isinstance(annotation, type), annotation
    return annotation
