"""Runtime: the app's long-lived state, reached by routes through ``request.app.state.runtime``."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ptserve.errors import NotReady
from ptserve.observability.access import AccessLog
from ptserve.observability.metrics import Metrics
from ptserve.observability.tracing import Tracing
from ptserve.registry import Registry, Served
from ptserve.settings import Settings

if TYPE_CHECKING:
    from ptserve.lifecycle import Lifecycle


@dataclass
class Runtime:
    """Settings, metrics, and (once the lifespan has loaded them) the served models, with the
    lifecycle that loads, swaps and releases their versions."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    models: Registry = field(default_factory=Registry)
    ready: bool = False
    draining: bool = False
    loads: int = 0
    tracing: Tracing | None = None
    access_log: AccessLog | None = None
    lifecycle: "Lifecycle | None" = None

    def serving(self, name: str | None = None, version: str | None = None) -> Served:
        """The model named ``name`` (the default model when None) at ``version`` (its
        highest served version when None): 503 before the models are loaded, 404 for an
        unknown name or version. Draining does not refuse: requests that still arrive are
        served."""
        self.check_loaded()
        return self.models.get(name, version)

    def check_loaded(self) -> None:
        """503 until the models are loaded and warm."""
        if not self.ready:
            raise NotReady("the model is not ready; try again shortly")

    def check_ready(self) -> None:
        """503 while loading, draining (so load balancers stop sending), or broken."""
        if self.draining:
            raise NotReady("the server is shutting down; send new requests elsewhere")
        self.check_loaded()
        self.check_live()

    def check_live(self) -> None:
        """503 when a batch loop has crashed: the process cannot make progress, and a restart
        is the cure (what orchestrators do on a failed liveness probe)."""
        for served in self.models.all():
            if served.service.batcher.crashed:
                raise NotReady("the batch loop stopped; restart this instance")

    def busy(self) -> bool:
        """Whether accepted work is still arriving, queued or running (in a retiring version
        too)."""
        if self.lifecycle is not None and self.lifecycle.busy():
            return True
        return any(served.service.batcher.busy() for served in self.models.all())
