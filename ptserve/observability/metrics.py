"""Prometheus metrics, correct under ``--workers N`` (prometheus-client's multiprocess mode).

Each app owns its metrics on its own registry, so tests can run apps side by side. With
PROMETHEUS_MULTIPROC_DIR set (the CLI sets it for N > 1 workers before they start), values
live in files there and ``/metrics`` adds up every worker's.

A prometheus-client update takes a lock and several checks (about 7,000 instructions; a tenth
of a small model's request path with the six a request made). So the hot path counts in plain
numbers on the event loop (``Tally``: counters, in-flight requests, queue depths) and
``publish()`` copies them into the metrics: before every ``/metrics`` answer, whenever the
server falls idle, and every ``PUBLISH_S`` seconds under load (for the other workers' scrapes).
Latency histograms are still observed per request.
"""

import contextlib
import os
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_S = 0.5
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every metric ptserve exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ptserve_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "ptserve_request_duration_seconds", "Time to answer a request", ["route", "method"],
            buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "ptserve_requests_in_flight", "Requests being answered", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        model = ["model", "version"]
        self.queue_seconds = Histogram(
            "ptserve_queue_wait_seconds", "Time a sample waited for its batch", model,
            buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "ptserve_batch_size", "Samples per forward pass", model, buckets=SIZES, registry=r
        )
        self.inference_seconds = Histogram(
            "ptserve_inference_duration_seconds", "Time of one forward pass", model,
            buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "ptserve_queue_depth", "Samples waiting for a batch", model, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.load_seconds = Gauge(
            "ptserve_model_load_seconds", "Time to load, probe and warm up the model", model,
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.warmup_seconds = Gauge(
            "ptserve_model_warmup_seconds", "Time of the warm-up passes", model, registry=r,
            multiprocess_mode="max",
        )  # fmt: skip
        self.loads = Counter(
            "ptserve_model_loads", "Loads of a model version, by outcome (ok, failed)",
            [*model, "outcome"], registry=r,
        )  # fmt: skip
        self.inferences = Counter(
            "ptserve_inference_requests", "Inference requests by model, protocol and outcome "
            "(ok, or the error code)", ["model", "version", "protocol", "outcome"], registry=r,
        )  # fmt: skip
        self.info = Gauge(
            "ptserve_model_info", "A served model version (value 1)",
            [*model, "format", "sha256", "device"], registry=r, multiprocess_mode="max",
        )  # fmt: skip

        self.tally = Tally()
        self.models: list[ModelMetrics] = []  # each model version's, while it lives

    def for_model(self, name: str, version: str) -> "ModelMetrics":
        model = ModelMetrics(self, name, version)
        self.models.append(model)
        return model

    def forget_failed(self, name: str, version: str, serving: "ModelMetrics | None") -> None:
        """Drop the series of a load of ``name`` ``version`` that failed after it made its
        metrics (``serving``: the metrics of a copy of that version still serving, if any)."""
        for model in [m for m in self.models if m.labels == (name, version) and m is not serving]:
            model.forget(serving)

    def publish(self) -> None:
        """Copy what the hot path counted into the metrics."""
        tally = self.tally
        self.in_flight.set(tally.in_flight)
        for (route, method, status), count in tally.take().items():
            self.requests.labels(route, method, str(status)).inc(count)
        for model in self.models:
            model.publish()

    def render(self) -> tuple[bytes, str]:
        """The exposition text, summed over all workers in multiprocess mode."""
        self.publish()
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Tally:
    """Counts kept as plain numbers on the event loop (no locks), published by ``Metrics``."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.counts: dict[tuple[str, str, int | str], int] = {}

    def count(self, key: tuple[str, str, int | str]) -> None:
        """One request answered: (route, method, status: HTTP's, or a gRPC code's name)."""
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def take(self) -> dict[tuple[str, str, int | str], int]:
        """The counts since the last call."""
        counts, self.counts = self.counts, {}
        return counts


class ModelMetrics:
    """One model version's metrics; its batcher reports to it (see batching.BatchObserver)."""

    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self.metrics = metrics
        self.labels = (name, version)
        self.queue_seconds = metrics.queue_seconds.labels(name, version)
        self.batch_size = metrics.batch_size.labels(name, version)
        self.inference_seconds = metrics.inference_seconds.labels(name, version)
        self.depth = metrics.queue_depth.labels(name, version)
        self._inferences = metrics.inferences
        self._counts: dict[tuple[str, str], int] = {}
        self._counted: set[tuple[str, str]] = set()  # the (protocol, outcome) series made
        self._queued = 0
        self.info_labels: tuple[str, ...] | None = None

    def count(self, protocol: str, outcome: str) -> None:
        """One inference request answered (``outcome``: ok, or its error code)."""
        key = (protocol, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def observe_batch(self, size: int, waits: Sequence[float], seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        for wait in waits:
            self.queue_seconds.observe(wait)

    def observe_queue(self, samples: int) -> None:
        self._queued = samples

    def publish(self) -> None:
        self.depth.set(self._queued)
        counts, self._counts = self._counts, {}
        for key, count in counts.items():
            self._inferences.labels(*self.labels, *key).inc(count)
            self._counted.add(key)

    def loaded(
        self, fmt: str, sha256: str, device: str, load_seconds: float, warmup_seconds: float
    ) -> None:
        """The version is loaded and warm: its loading costs and its info line."""
        metrics, labels = self.metrics, self.labels
        metrics.load_seconds.labels(*labels).set(load_seconds)
        metrics.warmup_seconds.labels(*labels).set(warmup_seconds)
        self.info_labels = (*labels, fmt, sha256, device)
        metrics.info.labels(*self.info_labels).set(1)

    def forget(self, successor: "ModelMetrics | None") -> None:
        """The version is no longer served (or failed to load): drop its series, so that a
        server swapping versions for months does not grow its exposition with every one. A
        ``successor`` of the same name and version (a reload) keeps those it shares;
        ``ptserve_model_loads`` keeps every load's history. Gauges are set to 0 first: with
        several workers a removed one lingers in the shared files."""
        metrics, labels = self.metrics, self.labels
        self.publish()  # what it counted since the last publish
        if self in metrics.models:
            metrics.models.remove(self)
        gauges: list[tuple[Gauge, tuple[str, ...]]] = []
        if self.info_labels is not None and (
            successor is None or successor.info_labels != self.info_labels
        ):
            gauges.append((metrics.info, self.info_labels))
        if successor is None:
            gauges += [(g, labels) for g in (metrics.queue_depth, metrics.load_seconds,
                                             metrics.warmup_seconds)]  # fmt: skip
            for histogram in (metrics.queue_seconds, metrics.batch_size, metrics.inference_seconds):
                with contextlib.suppress(KeyError):
                    histogram.remove(*labels)
            for key in self._counted:
                self._inferences.remove(*labels, *key)
        for gauge, values in gauges:
            gauge.labels(*values).set(0)
            gauge.remove(*values)


def mark_worker_dead(pid: int | None = None) -> None:
    """Drop a worker's live gauges (in flight, queue depth) from the multiprocess files: this
    process's when it stops, or, in the supervisor, those of a worker that died (however it
    died: a killed worker cannot clean up after itself)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]
