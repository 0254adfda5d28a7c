"""InferenceService: one model's signature, runner and post-processing, under every protocol."""

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from ptserve.batching import Arrival, Batcher, BatchObserver, BatchPolicy
from ptserve.errors import HookFailure, ModelLoadError, UnsupportedMediaType
from ptserve.hooks import Hooks, load_hooks, run_postprocess, run_preprocess
from ptserve.images import image_spec, to_batch
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
        hooks: Hooks | None = None,
    ) -> None:
        self.name = settings.model_name
        self.settings = settings
        self.facts = facts
        self.parameters = parameters
        self.runner = runner
        self.signature = signature
        self.labels = labels
        self.hooks = hooks
        self.preprocess_hook = hooks.preprocess if hooks is not None else None
        self.postprocess_hook = hooks.postprocess if hooks is not None else None
        raw = self.preprocess_hook is not None  # the hook turns instances into inputs
        self.images = None if raw else image_spec(signature, settings)
        self.decoder = RequestDecoder(
            signature, settings.max_instances, settings.allow_nan,
            images=self.images, raw=raw,
            example=hooks.example if hooks is not None else None,
        )  # fmt: skip
        self.postprocess = Postprocessor(
            signature, labels, settings.top_k, settings.output_activation, settings.threshold
        )
        # What a request needs besides the model (images, hooks) is CPU work for a worker
        # thread; plain JSON for a model without either is decoded on the event loop.
        self.decode_off_loop = self.images is not None or raw
        self.encode_off_loop = self.postprocess_hook is not None
        self.policy = BatchPolicy(settings.max_batch_size, settings.max_batch_delay_ms / 1000)
        self.batcher = Batcher(
            runner.forward, runner.run_blocking, self.policy, settings.max_queue, observer,
            concurrency=settings.inference_threads,
        )  # fmt: skip
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> "InferenceService":
        """Load the model, probe its outputs, read labels and warm it up (blocking)."""
        started = time.monotonic()
        loaded = load_model(settings)
        model = compiled(loaded.model, settings.model_path) if settings.compile else loaded.model
        runner = Runner(model, settings.device, loaded.signature, settings.inference_threads)
        name = settings.model_name
        hooks = load_hooks(settings.handler) if settings.handler else loaded.hooks
        try:  # what fails from here on is about this model file: say which
            signature = runner.probe(loaded.signature, settings.output_names)
            labels_path = find_labels(settings.model_path, settings.labels)
            labels = read_labels(labels_path) if labels_path else None
            service = cls(
                settings, loaded.facts, loaded.parameters, runner, signature, labels,
                metrics.for_model(name), hooks,
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
        if self.preprocess_hook is not None:
            instances, top_k = self.decoder.parse(body)
            decoded = Decoded(self._preprocess(instances), top_k)
        else:
            decoded = self.decoder.decode(body)
        self.postprocess.check(decoded.top_k)
        return decoded

    @property
    def takes_uploads(self) -> bool:
        """Whether file uploads (multipart) make sense: an image model, or a preprocess hook
        that takes files."""
        hook_files = (
            self.hooks is not None and self.preprocess_hook is not None and self.hooks.files
        )
        return self.images is not None or hook_files

    def decode_uploads(self, files: list[bytes], top_k: int | None) -> Decoded:
        """Uploaded files (blocking: images are decoded here); 4xx when one is bad."""
        if self.preprocess_hook is not None:
            decoded = Decoded(self._preprocess(list(files)), top_k)
        elif self.images is not None:
            decoded = Decoded([to_batch(files, self.images, "files")], top_k)
        else:
            raise UnsupportedMediaType(
                "this model does not take images; send JSON with 'Content-Type: application/json'"
            )
        self.postprocess.check(top_k)
        return decoded

    def _preprocess(self, instances: list[Any]) -> list[np.ndarray[Any, Any]]:
        assert self.hooks is not None
        return run_preprocess(self.hooks, instances, self.signature, self.decoder.translate)

    async def infer(
        self, arrays: list[np.ndarray[Any, Any]], timeout: float
    ) -> list[np.ndarray[Any, Any]]:
        """Run validated arrays through the batcher: 503 when it is full, 504 past ``timeout``
        seconds in the queue, 500 when the model raises on these samples."""
        return await self.batcher.submit(arrays, timeout)

    def encode(self, decoded: Decoded, outputs: list[np.ndarray[Any, Any]]) -> bytes:
        """The simple protocol's response bytes (blocking when there is a postprocess hook)."""
        if self.hooks is None or self.postprocess_hook is None:
            return _response(self.postprocess(outputs, decoded.top_k), self.name)
        predictions = run_postprocess(self.hooks, outputs, decoded.size, self.decoder.translate)
        try:
            return _response(predictions, self.name)
        except orjson.JSONEncodeError as exc:
            log.error("the postprocess hook of %s returned non-JSON: %s", self.hooks.source, exc)
            raise HookFailure("the postprocess hook failed; the server log has details") from None

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
            "output_activation": self.settings.output_activation,
            "threshold": self.settings.threshold,
            "images": self.images.describe() if self.images is not None else None,
            "handler": self.hooks.source if self.hooks is not None else None,
            "uploads": self.takes_uploads,
            "max_instances": self.settings.max_instances,
            "load_seconds": round(self.load_seconds, 3),
        }

    async def stop(self) -> None:
        """Finish queued work, then release the inference thread."""
        await self.batcher.stop()
        self.runner.close()


def _response(predictions: list[Any], name: str) -> bytes:
    return orjson.dumps(
        {"predictions": predictions, "model": name}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def compiled(model: Any, path: Path) -> Any:
    """``torch.compile`` with dynamic shapes (one graph for every batch size); it compiles on the
    first calls, i.e. during the probe and the warm-up, before the server is ready."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelLoadError(f"{path}: --compile does not apply to TorchScript programs")
    return torch.compile(model, dynamic=True)


def choose_execution(setting: str, largest_batch_s: float) -> str:
    """``inline`` for a model whose largest batch is faster than a thread hop costs."""
    if setting != "auto":
        return setting
    return "inline" if largest_batch_s < INLINE_BELOW_S else "thread"


def batch_buckets(largest: int) -> list[int]:
    """1, 2, 4, ... up to and including ``largest``."""
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i < largest]
    return [*sizes, largest]
