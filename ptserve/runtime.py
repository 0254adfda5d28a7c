"""Runtime: the app's long-lived state, reached by routes through ``request.app.state.runtime``."""

from dataclasses import dataclass, field

from ptserve.errors import ModelNotFound, NotReady
from ptserve.observability.metrics import Metrics
from ptserve.observability.tracing import Tracing
from ptserve.service import InferenceService
from ptserve.settings import Settings


@dataclass
class Runtime:
    """Settings, metrics and (once the lifespan has loaded it) the model's service."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    service: InferenceService | None = None
    ready: bool = False
    draining: bool = False
    loads: int = 0
    tracing: Tracing | None = None

    def serving(self, name: str | None = None) -> InferenceService:
        """The service (named ``name``, when given); 503 while loading, 404 for an unknown
        name. A draining server still serves: only its readiness is 503 (``check_ready``)."""
        if self.service is None or not self.ready:
            raise NotReady("the model is not ready; try again shortly")
        if name is not None and name != self.service.name:
            raise ModelNotFound(
                f"no model named {name!r}; this server serves {self.service.name!r}"
            )
        return self.service

    def check_ready(self) -> None:
        """503 while loading or draining (load balancers stop routing here), else nothing."""
        if self.draining:
            raise NotReady("the server is shutting down; retry on another instance")
        self.serving()

    def check_live(self) -> None:
        """503 when the batch loop has crashed: the process cannot make progress, and a restart
        is the cure (what orchestrators do on a failed liveness probe)."""
        if self.service is not None and self.service.batcher.crashed:
            raise NotReady("the batch loop stopped; restart this instance")

    def busy(self) -> bool:
        """Whether accepted work is still arriving, queued or running."""
        return self.service is not None and self.service.batcher.busy()
