"""What the server says about each model version that is or could be served: the V2 repository
index's rows, and the reasons a 404 gives for a version that is not served."""

from typing import TYPE_CHECKING

from ptserve.repository import ModelProblem, ModelSource

if TYPE_CHECKING:
    from ptserve.lifecycle import Key, Lifecycle


def index_rows(lifecycle: "Lifecycle") -> list[dict[str, str]]:
    """Every model and version the folder holds or the server serves, with its state (Triton's
    READY, LOADING, UNLOADING, UNAVAILABLE) and, unless ready, why."""
    rows: dict[Key, tuple[str, str]] = {}
    for name, found in lifecycle.found.items():
        if isinstance(found, ModelProblem):
            continue  # its failure says why
        selected = found.policy.select(found.versions)
        unloaded = name in lifecycle.unloaded
        outside = "unloaded" if unloaded else outside_policy(found)
        for v in found.versions:
            why = "not loaded" if v in selected and not unloaded else outside
            rows[(name, str(v))] = ("UNAVAILABLE", why)
    rows.update({key: ("UNAVAILABLE", reason) for key, (_, reason) in lifecycle.failed.items()})
    rows.update({key: ("UNLOADING", "finishing its requests") for key in lifecycle.retiring})
    rows.update({key: ("LOADING", "") for key in lifecycle.loading})
    registry = lifecycle.registry
    rows.update({(n, v): ("READY", "") for n in registry.names() for v in registry.versions(n)})
    return [
        {"name": name, "version": version, "state": state, "reason": reason}
        for (name, version), (state, reason) in sorted(rows.items(), key=_order)
    ]


def missing_reasons(lifecycle: "Lifecycle") -> dict["Key", str]:
    """Why each version (or, with version "", model) that is not served is missing."""
    reasons: dict[Key, str] = {}
    for name, found in lifecycle.found.items():
        if isinstance(found, ModelSource):
            left = set(found.versions) - set(found.policy.select(found.versions))
            reasons.update({(name, str(v)): outside_policy(found) for v in left})
    reasons.update({key: reason for key, (_, reason) in lifecycle.failed.items()})
    reasons.update({key: "loading" for key in lifecycle.loading})
    reasons.update({(n, ""): "unloaded through the repository API" for n in lifecycle.unloaded})
    return reasons


def outside_policy(found: ModelSource) -> str:
    return f"not served under its version policy ({found.policy.describe()})"


def _order(row: tuple["Key", tuple[str, str]]) -> tuple[str, int, str]:
    (name, version), _ = row
    return name, int(version) if version.isdigit() else 0, version
