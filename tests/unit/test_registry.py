"""The registry: several versions per model, one-swap changes, and 404s that say why."""

import pytest

from ptserve.errors import ModelNotFound
from ptserve.observability.metrics import Metrics
from ptserve.registry import Registry, Served
from ptserve.service import InferenceService
from ptserve.settings import Settings
from tests.repos import add_version, marked_net


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Served]:
    """Real loaded services: models a and b, versions 1, 2 and 10."""
    root = tmp_path_factory.mktemp("repo")
    metrics = Metrics()
    made = {}
    for name in ("a", "b"):
        for version in (1, 2, 10):
            path = add_version(root, name, version, marked_net(version))
            settings = Settings(model_path=path, name=name, execution="inline")
            service = InferenceService.start(settings, metrics, str(version))
            made[(name, str(version))] = Served.of(service)
    return made


def test_versions_are_ordered_as_numbers_and_the_highest_answers(
    services: dict[tuple[str, str], Served],
) -> None:
    registry = Registry()
    versions = {v: services[("a", v)] for v in ("1", "10", "2")}
    assert registry.swap("a", versions) == []
    assert registry.versions("a") == ["10", "2", "1"]
    assert registry.get("a") is services[("a", "10")]
    assert registry.get("a", "2") is services[("a", "2")]


def test_a_swap_returns_what_is_no_longer_served(services: dict[tuple[str, str], Served]) -> None:
    registry = Registry()
    registry.swap("a", {"1": services[("a", "1")], "2": services[("a", "2")]})
    before = registry.all()
    replaced = registry.swap("a", {"2": services[("a", "2")], "10": services[("a", "10")]})
    assert replaced == [services[("a", "1")]]
    assert before == [services[("a", "2")], services[("a", "1")]]  # a snapshot, unchanged
    assert registry.swap("a", {}) == [services[("a", "10")], services[("a", "2")]]
    assert registry.names() == []


def test_default_model_first_and_one_latest_per_model(
    services: dict[tuple[str, str], Served],
) -> None:
    registry = Registry()
    registry.swap("a", {"1": services[("a", "1")]})
    registry.swap("b", {"1": services[("b", "1")], "2": services[("b", "2")]})
    registry.default = "b"
    assert registry.names() == ["b", "a"]
    assert [s.service.version for s in registry.all()] == ["2", "1", "1"]
    assert registry.latest() == [services[("b", "2")], services[("a", "1")]]
    assert registry.get(None) is services[("b", "2")]


def test_404s_name_what_is_served_and_why_a_version_is_missing(
    services: dict[tuple[str, str], Served],
) -> None:
    registry = Registry()
    registry.swap("a", {"1": services[("a", "1")], "2": services[("a", "2")]})
    registry.swap("b", {"1": services[("b", "1")]})
    registry.explain({("a", "3"): "a/3/model.pt: unknown model format", ("c", ""): "unloaded"})
    with pytest.raises(ModelNotFound, match=r"several models .'a', 'b'. and none is the default"):
        registry.get(None)
    with pytest.raises(ModelNotFound, match=r"^no model named 'x'; this server serves 'a', 'b'$"):
        registry.get("x")
    with pytest.raises(ModelNotFound, match=r"^model 'c' is not served \(unloaded\)"):
        registry.get("c")
    with pytest.raises(
        ModelNotFound,
        match=r"^model 'a' has no version '3'; it serves versions '2', '1' "
        r"\(version '3': a/3/model.pt: unknown model format\)$",
    ):
        registry.get("a", "3")
    with pytest.raises(ModelNotFound, match=r"^model 'b' has no version '7'; its only version is"):
        registry.get("b", "7")
