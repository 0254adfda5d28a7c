"""InferenceService: one loaded model version, protocol-neutral — arrays in, arrays out.

It owns what every protocol shares: the model's preprocessing (images, hooks, fastai
transforms), admission and the batcher with its deadlines, the post-processing into
predictions (labels, hooks), metadata, and the per-model metrics. Wire formats live in the
codecs (``ptserve/protocols``).
"""

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anyio import to_thread

from ptserve.batching import Batcher, BatchPolicy
from ptserve.errors import InvalidInput, ModelLoadError
from ptserve.hooks import Hooks, load_hooks, run_postprocess, run_preprocess
from ptserve.images import ImageSpec, image_spec, to_sample
from ptserve.loading import FileFacts, load_model
from ptserve.observability.metrics import Metrics, ModelMetrics
from ptserve.pipeline import Arrays, ModelInput
from ptserve.postprocess import Postprocessor, find_labels, read_labels
from ptserve.runner import Runner
from ptserve.settings import Settings
from ptserve.signature import Signature
from ptserve.threads import ThreadPlan, choose_threads
from ptserve.validation import Translator

log = logging.getLogger("ptserve")


class InferenceService:
    """One model version: its signature, runner, batcher and post-processing."""

    def __init__(
        self,
        settings: Settings,
        facts: FileFacts,
        parameters: int,
        runner: Runner,
        signature: Signature,
        labels: list[str] | None,
        metrics: ModelMetrics,
        hooks: Hooks | None = None,
        version: str = "1",
    ) -> None:
        self.name = settings.model_name
        self.version = version
        self.settings = settings
        self.facts = facts
        self.parameters = parameters
        self.runner = runner
        self.signature = signature
        self.labels = labels
        self.hooks = hooks
        self.metrics = metrics
        self.preprocess_hook = hooks.preprocess if hooks is not None else None
        self.postprocess_hook = hooks.postprocess if hooks is not None else None
        self.images: ImageSpec | None = None
        if self.preprocess_hook is None:  # a hook turns instances into inputs itself
            self.images = image_spec(signature, settings)
        self.translate = Translator(signature, settings.max_instances)
        self.postprocessor = Postprocessor(
            signature, labels, settings.top_k, settings.output_activation, settings.threshold
        )
        # Images and hooks are CPU work for a worker thread; validated arrays need none.
        self.prepare_off_loop = self.images is not None or self.preprocess_hook is not None
        self.timeout_s = settings.timeout_ms / 1000
        self.admission_wait_s = settings.admission_wait_ms / 1000
        self.policy = BatchPolicy(settings.max_batch_size, settings.max_batch_delay_ms / 1000)
        self.output_count = len(signature.outputs)
        self.batcher = Batcher(
            self._forward, runner.run_blocking, self.policy, settings.max_queue, metrics,
            concurrency=settings.inference_threads or 1,
        )  # fmt: skip
        self.threads: ThreadPlan | None = None
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics, version: str = "1") -> "InferenceService":
        """Load the model, probe its outputs, read labels and warm it up (blocking), logging
        each phase with its duration."""
        started = time.monotonic()
        name = settings.model_name
        with _phase("load"):
            loaded = load_model(settings)
        model = compiled(loaded.model, settings.model_path) if settings.compile else loaded.model
        runner = Runner(model, settings.device, loaded.signature)
        hooks = load_hooks(settings.handler) if settings.handler else loaded.hooks
        try:  # what fails from here on is about this model file: say which
            what = "probe (and compile)" if settings.compile else "probe"
            with _phase(what):
                signature = runner.probe(loaded.signature, settings.output_names)
            labels_path = find_labels(settings.model_path, settings.labels)
            labels = read_labels(labels_path) if labels_path else None
            service = cls(
                settings, loaded.facts, loaded.parameters, runner, signature, labels,
                metrics.for_model(name, version), hooks, version,
            )  # fmt: skip
        except ModelLoadError as exc:
            raise ModelLoadError(f"{settings.model_path}: {exc}") from None
        warm_started = time.monotonic()
        with _phase("warm-up"):
            service.warm_up()
        service.warmup_seconds = time.monotonic() - warm_started
        service.load_seconds = time.monotonic() - started
        service.metrics.loaded(
            loaded.facts.format, loaded.facts.sha256, settings.device,
            service.load_seconds, service.warmup_seconds,
        )  # fmt: skip
        log.info("model %r version %s ready in %.2fs", name, version, service.load_seconds)
        return service

    def warm_up(self) -> None:
        """Run example batches at each batch size bucket (1, 2, 4, ... max_batch_size), so the
        first real request is as fast as the hundredth; then choose where the model runs and
        with how many threads from what the passes measured (unless the settings say)."""
        samples = self.signature.example_sample()
        full = [
            np.repeat(sample[np.newaxis], self.policy.max_batch_size, axis=0) for sample in samples
        ]
        for size in batch_buckets(self.policy.max_batch_size):
            batch = [array[:size] for array in full]
            for _ in range(2):
                self.runner.forward(batch)
        self.threads = choose_threads(self.settings, lambda: self.runner.forward(full))
        self.runner.use(self.threads)
        self.batcher.concurrency_to(self.threads.inference)
        log.info("%s", self.threads.describe(self.policy.max_batch_size))

    def _forward(self, arrays: Arrays) -> Arrays:
        """A batch through the model (on the inference thread), with its label scores computed
        for the whole batch at once."""
        outputs = self.runner.forward(arrays)
        return [*outputs, *self.postprocessor.scores(outputs)]

    def start_batching(self) -> None:
        """Start the batch loop; needs the running event loop."""
        self.batcher.start()

    async def admit(self, timeout: float) -> None:
        """Admit a request before its body is read: at once, or after waiting up to
        ``admission_wait_ms`` (within its own ``timeout``) for room in the queue; 503 with
        Retry-After otherwise. The request then counts as arriving until ``arrived()``."""
        await self.batcher.admit(min(self.admission_wait_s, timeout))

    def arrived(self) -> None:
        """The admitted request failed before it was queued."""
        self.batcher.arrived()

    def will_wait(self) -> bool:
        """Whether new work would wait behind a batch already in the model."""
        return self.batcher.will_wait()

    def check(self, request: ModelInput) -> None:
        """Refuse request options this model cannot honour, before the model runs."""
        self.postprocessor.check(request.top_k)

    async def prepare(self, request: ModelInput) -> Arrays:
        """The model's inputs for a request: its arrays as they are, or its instances through
        the image decoder or the preprocess hook (on a worker thread)."""
        if request.arrays is not None:
            return request.arrays
        if self.prepare_off_loop:
            return await to_thread.run_sync(self._prepare, request)
        return self._prepare(request)

    def _prepare(self, request: ModelInput) -> Arrays:
        instances = request.instances
        assert instances is not None
        if self.hooks is not None and self.preprocess_hook is not None:
            return run_preprocess(self.hooks, instances, self.signature, self.translate)
        if self.images is None:
            raise InvalidInput(
                f"{request.where}: this model takes tensors, not images or files; "
                "send numbers shaped like its input"
            )
        spec, images = self.signature.inputs[0], self.images
        samples = [
            x
            if isinstance(x, np.ndarray)
            else to_sample(x, images, request.location(i) + request.suffix)
            for i, x in enumerate(instances)
        ]
        for i, sample in enumerate(samples):
            if not spec.matches(sample.shape):
                raise InvalidInput(
                    f"{request.location(i)}: shape {list(sample.shape)} does not fit "
                    f"'{spec.name}' {list(spec.shape)}"
                )
        return [np.stack(samples)]

    async def infer(self, arrays: Arrays, timeout: float, admitted: bool = False) -> Arrays:
        """Run validated arrays through the batcher (``admitted``: by ``admit``): 503 when it
        is full, 504 past ``timeout`` seconds in the queue, 500 when the model raises on these
        samples. Returns the model's outputs (the first ``output_count``), then what
        ``predictions`` needs of them."""
        return await self.batcher.submit(arrays, timeout, admitted)

    async def predictions(self, outputs: Arrays, request: ModelInput) -> list[Any]:
        """One prediction per sample: the postprocess hook's (on a worker thread), or labels
        with scores, or the raw outputs."""
        if self.hooks is not None and self.postprocess_hook is not None:
            model_outputs = outputs[: self.output_count]
            return await to_thread.run_sync(
                run_postprocess, self.hooks, model_outputs, request.size, self.translate
            )
        return self.postprocessor(outputs, request.top_k)

    def count(self, protocol: str, outcome: str) -> None:
        """Count one inference request by protocol and outcome (``ok`` or an error code)."""
        self.metrics.count(protocol, outcome)

    @property
    def takes_uploads(self) -> bool:
        """Whether file uploads make sense: an image model, or a hook that takes files."""
        hook_files = (
            self.hooks is not None and self.preprocess_hook is not None and self.hooks.files
        )
        return self.images is not None or hook_files

    def describe(self) -> dict[str, Any]:
        """Metadata for ``GET /models/{name}``."""
        threads = self.threads
        return {
            "name": self.name,
            "version": self.version,
            "format": self.facts.format,
            "file": self.facts.path.name,
            "size_bytes": self.facts.size_bytes,
            "sha256": self.facts.sha256,
            "parameters": self.parameters,
            "device": str(self.runner.device),
            "execution": "inline" if self.runner.inline else "thread",
            "threads": threads.describe_dict() if threads is not None else None,
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

    async def stop(self, timeout: float = float("inf")) -> None:
        """Finish queued work (up to ``timeout`` seconds), then release the inference threads."""
        await self.batcher.stop(timeout)
        self.runner.close()


@contextlib.contextmanager
def _phase(what: str) -> Iterator[None]:
    """Log the start and end of a start-up phase, with its duration."""
    log.info("start-up: %s ...", what)
    started = time.monotonic()
    yield
    log.info("start-up: %s done in %.2fs", what, time.monotonic() - started)


def compiled(model: Any, path: Path) -> Any:
    """``torch.compile`` with dynamic shapes (one graph for every batch size); it compiles on the
    first calls, i.e. during the probe and the warm-up, before the server is ready."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelLoadError(f"{path}: --compile does not apply to TorchScript programs")
    return torch.compile(model, dynamic=True)


def batch_buckets(largest: int) -> list[int]:
    """1, 2, 4, ... up to and including ``largest``."""
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i < largest]
    return [*sizes, largest]
