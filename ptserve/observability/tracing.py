"""Optional OpenTelemetry tracing (the ``otel`` extra): a span per request, with ``queue`` and
``inference`` child spans. Off by default, and then nothing here is imported or called.

ptserve only creates spans; the operator picks the exporter the usual way (a configured
TracerProvider, e.g. through ``opentelemetry-instrument`` or the OTEL_* environment variables).
"""

from collections.abc import Mapping
from typing import Any

from ptserve.observability.context import Timing


class Tracing:
    """Creates request spans, continuing a trace from the W3C ``traceparent`` header."""

    def __init__(self) -> None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            raise ValueError("tracing needs OpenTelemetry: pip install 'ptserve[otel]'") from None
        self._propagate = propagate
        self._trace = trace
        self.tracer = trace.get_tracer("ptserve")

    def start(self, headers: Mapping[str, str], start_ns: int) -> Any:
        parent = self._propagate.extract(dict(headers))
        return self.tracer.start_span(
            "request", context=parent, kind=self._trace.SpanKind.SERVER, start_time=start_ns
        )

    def finish(
        self, span: Any, route: str, method: str, status: int, request_id: str, timing: Timing
    ) -> None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.request.method", method)
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("ptserve.request_id", request_id)
        if timing.queue is not None and timing.inference is not None:
            parent = self._trace.set_span_in_context(span)
            started = timing.batch_started_ns
            queue = self.tracer.start_span(
                "queue", context=parent, start_time=started - int(timing.queue * 1e9)
            )
            queue.end(end_time=started)
            inference = self.tracer.start_span("inference", context=parent, start_time=started)
            inference.set_attribute("ptserve.batch_size", timing.batch_size)
            inference.end(end_time=started + int(timing.inference * 1e9))
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()
