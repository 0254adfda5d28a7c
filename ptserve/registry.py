"""The served models: each version of each model with the state its protocol codecs keep."""

from dataclasses import dataclass

from ptserve.errors import ModelNotFound
from ptserve.protocols.oip_v2 import V2Codec
from ptserve.protocols.simple import SimpleCodec
from ptserve.service import InferenceService


@dataclass(frozen=True)
class Served:
    """One model version, and per protocol what its codec precomputed for it."""

    service: InferenceService
    simple: SimpleCodec
    v2: V2Codec

    @classmethod
    def of(cls, service: InferenceService) -> "Served":
        return cls(service, SimpleCodec(service), V2Codec(service))


class Registry:
    """Models by name; each name serves one version."""

    def __init__(self) -> None:
        self._models: dict[str, Served] = {}
        self.default: str | None = None

    def add(self, service: InferenceService) -> Served:
        """Serve ``service`` under its name (the first added is the default model)."""
        served = Served.of(service)
        self._models[service.name] = served
        if self.default is None:
            self.default = service.name
        return served

    def get(self, name: str | None, version: str | None = None) -> Served:
        """The named model (the default one when None) at ``version``; 404 otherwise."""
        key = self.default if name is None else name
        served = self._models.get(key) if key is not None else None
        if served is None:
            known = ", ".join(repr(n) for n in self._models) or "none"
            raise ModelNotFound(f"no model named {name!r}; this server serves {known}")
        if version is not None and version != served.service.version:
            raise ModelNotFound(
                f"model {key!r} has no version {version!r}; its only version is "
                f"{served.service.version!r}"
            )
        return served

    def all(self) -> list[Served]:
        return list(self._models.values())
