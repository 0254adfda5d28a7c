"""InferenceService: one model's signature, runner and post-processing, under every protocol."""

import logging
import time
from typing import Any

import numpy as np
import orjson

from ptserve.batching import Arrival, Batcher, BatchObserver, BatchPolicy
from ptserve.errors import ModelLoadError
from ptserve.loading import FileFacts, load_model
from ptserve.observability.metrics import Metrics
from ptserve.postprocess import Postprocessor, find_labels, read_labels
from ptserve.runner import Runner
from ptserve.settings import Settings
from ptserve.signature import Signature
from ptserve.validation import Decoded, RequestDecoder

log = logging.getLogger("ptserve")
WARMUP_PASSES = 2
INLINE_BELOW_S = 0.001


class InferenceService:
    """The protocol-neutral core: validated inputs in, predictions out."""

    def __init__(
        self,
        settings: Settings,
        facts: FileFacts,
        parameters: int,
        runner: Runner,
        signature: Signature,
        labels: list[str] | None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = settings.model_name
        self.settings = settings
        self.facts = facts
        self.parameters = parameters
        self.runner = runner
        self.signature = signature
        self.labels = labels
        self.decoder = RequestDecoder(signature, settings.max_instances, settings.allow_nan)
        self.postprocess = Postprocessor(signature, labels, settings.top_k)
        self.policy = BatchPolicy(settings.max_batch_size, settings.max_batch_delay_ms / 1000)
        self.batcher = Batcher(
            runner.forward, runner.run_blocking, self.policy, settings.max_queue, observer
        )
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> "InferenceService":
        """Load the model, probe its outputs, read labels and warm it up (blocking)."""
        started = time.monotonic()
        loaded = load_model(settings)
        runner = Runner(loaded.model, settings.device, loaded.signature)
        name = settings.model_name
        try:  # what fails from here on is about this model file: say which
            signature = runner.probe(loaded.signature, settings.output_names)
            labels_path = find_labels(settings.model_path, settings.labels)
            labels = read_labels(labels_path) if labels_path else None
            service = cls(
                settings, loaded.facts, loaded.parameters, runner, signature, labels,
                metrics.for_model(name),
            )  # fmt: skip
        except ModelLoadError as exc:
            raise ModelLoadError(f"{settings.model_path}: {exc}") from None
        warm_started = time.monotonic()
        service.warm_up()
        service.warmup_seconds = time.monotonic() - warm_started
        service.load_seconds = time.monotonic() - started
        metrics.load_seconds.labels(name).set(service.load_seconds)
        metrics.warmup_seconds.labels(name).set(service.warmup_seconds)
        metrics.info.labels(name, loaded.facts.format, loaded.facts.sha256, settings.device).set(1)
        log.info("model %r ready in %.2fs", name, service.load_seconds)
        return service

    def warm_up(self) -> None:
        """Passes on example data at each batch size bucket (1, 2, 4, ... max_batch_size), so
        the first real request, alone or in a full batch, is as fast as the hundredth."""
        samples = self.signature.example_sample()
        fastest = float("inf")
        for size in batch_buckets(self.policy.max_batch_size):
            batch = [np.repeat(sample[np.newaxis], size, axis=0) for sample in samples]
            fastest = float("inf")
            for _ in range(WARMUP_PASSES):
                started = time.perf_counter()
                self.runner.forward(batch)
                fastest = min(fastest, time.perf_counter() - started)
        self.runner.inline = choose_execution(self.settings.execution, fastest) == "inline"
        log.info(
            "a batch of %d takes %.2f ms; the model runs %s",
            self.policy.max_batch_size,
            fastest * 1000,
            "on the event loop" if self.runner.inline else "on its inference thread",
        )

    def start_batching(self) -> None:
        """Start the batch loop; needs the running event loop."""
        self.batcher.start()

    def arrival(self) -> Arrival:
        """Mark a request as on its way to the batcher while its body is read and validated."""
        return self.batcher.arrival()

    def decode(self, body: bytes) -> Decoded:
        """Validate a ``{"instances": [...]}`` body; raises a 4xx ServeError when it is bad."""
        decoded = self.decoder.decode(body)
        self.postprocess.check(decoded.top_k)
        return decoded

    async def infer(
        self, arrays: list[np.ndarray[Any, Any]], timeout: float
    ) -> list[np.ndarray[Any, Any]]:
        """Run validated arrays through the batcher: 503 when it is full, 504 past ``timeout``
        seconds in the queue, 500 when the model raises on these samples."""
        return await self.batcher.submit(arrays, timeout)

    def encode(self, decoded: Decoded, outputs: list[np.ndarray[Any, Any]]) -> bytes:
        """The simple protocol's response bytes."""
        predictions = self.postprocess(outputs, decoded.top_k)
        return orjson.dumps(
            {"predictions": predictions, "model": self.name}, option=orjson.OPT_SERIALIZE_NUMPY
        )

    def describe(self) -> dict[str, Any]:
        """Metadata for ``GET /models/{name}``."""
        return {
            "name": self.name,
            "format": self.facts.format,
            "file": self.facts.path.name,
            "size_bytes": self.facts.size_bytes,
            "sha256": self.facts.sha256,
            "parameters": self.parameters,
            "device": str(self.runner.device),
            "execution": "inline" if self.runner.inline else "thread",
            "batching": {
                "max_batch_size": self.policy.max_batch_size,
                "max_batch_delay_ms": self.settings.max_batch_delay_ms,
                "max_queue": self.settings.max_queue,
                "timeout_ms": self.settings.timeout_ms,
            },
            "signature": self.signature.describe(),
            "labels": self.labels,
            "max_instances": self.settings.max_instances,
            "load_seconds": round(self.load_seconds, 3),
        }

    async def stop(self) -> None:
        """Finish queued work, then release the inference thread."""
        await self.batcher.stop()
        self.runner.close()


def choose_execution(setting: str, largest_batch_s: float) -> str:
    """``inline`` for a model whose largest batch is faster than a thread hop costs."""
    if setting != "auto":
        return setting
    return "inline" if largest_batch_s < INLINE_BELOW_S else "thread"


def batch_buckets(largest: int) -> list[int]:
    """1, 2, 4, ... up to and including ``largest``."""
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i < largest]
    return [*sizes, largest]
