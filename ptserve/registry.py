"""The served models: each version of each model with the state its protocol codecs keep.

The registry is read on every request and changed only on the event loop, by swapping one
model's whole set of versions for another in one reference assignment: a request sees either
the old set or the new one, never a mixture.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ptserve.errors import ModelNotFound
from ptserve.protocols.oip_v2 import V2Codec
from ptserve.protocols.simple import SimpleCodec
from ptserve.service import InferenceService


@dataclass(frozen=True)
class Served:
    """One model version, and per protocol what its codec precomputed for it. ``transports``:
    what other transports build for it on first use (gRPC's codec), which lives and dies with
    the version (a cache beside the registry would keep swapped-out versions alive)."""

    service: InferenceService
    simple: SimpleCodec
    v2: V2Codec
    transports: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, service: InferenceService) -> "Served":
        return cls(service, SimpleCodec(service), V2Codec(service))


@dataclass(frozen=True)
class ModelVersions:
    """One model's served versions, highest first (an immutable snapshot)."""

    name: str
    versions: Mapping[str, Served]

    @property
    def latest(self) -> Served:
        """What unversioned requests reach: the highest served version."""
        return next(iter(self.versions.values()))


class Registry:
    """Models by name, each with one or more served versions; ``default`` names the model that
    ``/predict`` serves (None: no default)."""

    def __init__(self) -> None:
        self._models: Mapping[str, ModelVersions] = MappingProxyType({})
        self.default: str | None = None
        # why versions are missing, for 404s that say so: (name, version) -> reason
        self._reasons: Mapping[tuple[str, str], str] = MappingProxyType({})

    def swap(self, name: str, versions: Mapping[str, Served]) -> list[Served]:
        """Serve exactly ``versions`` of model ``name`` from now on (none: stop serving it), in
        one reference swap. Returns what was served before and no longer is."""
        ordered = dict(sorted(versions.items(), key=lambda item: _order(item[0]), reverse=True))
        models = dict(self._models)
        before = models.pop(name, None)
        if ordered:
            models[name] = ModelVersions(name, MappingProxyType(ordered))
        self._models = MappingProxyType(dict(sorted(models.items())))
        kept = {id(served) for served in ordered.values()}
        old = before.versions.values() if before is not None else ()
        return [served for served in old if id(served) not in kept]

    def explain(self, reasons: Mapping[tuple[str, str], str]) -> None:
        """Why models or versions that are not served are missing, named in their 404s:
        ``(name, version)`` -> reason, with version "" for a whole model."""
        self._reasons = MappingProxyType(dict(reasons))

    def get(self, name: str | None, version: str | None = None) -> Served:
        """The named model (the default one when None) at ``version`` (the highest served one
        when None); 404 otherwise."""
        models = self._models
        key = self.default if name is None else name
        if key is None:
            known = ", ".join(repr(n) for n in models) or "none"
            raise ModelNotFound(
                f"this server serves several models ({known}) and none is the default; name "
                "one (/v1/models/NAME:predict, /v2/models/NAME/infer) or start the server "
                "with --default-model NAME"
            )
        entry = models.get(key)
        if entry is None:
            known = ", ".join(repr(n) for n in models) or "none"
            reason = self._reasons.get((key, ""))
            if name is None or reason:
                which = "the default model" if name is None else "model"
                why = f" ({reason})" if reason else ""
                raise ModelNotFound(
                    f"{which} {key!r} is not served{why}; this server serves {known}"
                )
            raise ModelNotFound(f"no model named {key!r}; this server serves {known}")
        if version is None:
            return entry.latest
        served = entry.versions.get(version)
        if served is None:
            if len(entry.versions) == 1:
                serves = f"its only version is {next(iter(entry.versions))!r}"
            else:
                serves = "it serves versions " + ", ".join(repr(v) for v in entry.versions)
            reason = self._reasons.get((key, version))
            why = f" (version {version!r}: {reason})" if reason else ""
            raise ModelNotFound(f"model {key!r} has no version {version!r}; {serves}{why}")
        return served

    def versions(self, name: str) -> list[str]:
        """The served versions of ``name``, highest first (none when it is not served)."""
        entry = self._models.get(name)
        return list(entry.versions) if entry is not None else []

    def names(self) -> list[str]:
        """The served models' names, the default model first."""
        default = self.default
        names = list(self._models)
        if default is not None and default in self._models:
            names.remove(default)
            names.insert(0, default)
        return names

    def all(self) -> list[Served]:
        """Every served version of every model (the default model first, highest versions
        first)."""
        models = self._models
        return [s for name in self.names() for s in models[name].versions.values()]

    def latest(self) -> list[Served]:
        """One per model: the version unversioned requests reach."""
        models = self._models
        return [models[name].latest for name in self.names()]


def _order(version: str) -> tuple[int, str]:
    """Versions sort as numbers (a repository's are positive integers)."""
    return (int(version), "") if version.isdigit() else (-1, version)
