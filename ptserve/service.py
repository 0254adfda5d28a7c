"""InferenceService: one model's signature, runner and post-processing, under every protocol."""

import logging
import time
from typing import Any

import numpy as np
import orjson

from ptserve.errors import ModelFailure
from ptserve.loading import FileFacts, load_model
from ptserve.postprocess import Postprocessor, find_labels, read_labels
from ptserve.runner import Runner
from ptserve.settings import Settings
from ptserve.signature import Signature
from ptserve.validation import Decoded, RequestDecoder

log = logging.getLogger("ptserve")
WARMUP_PASSES = 3


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
        self.load_seconds = 0.0

    @classmethod
    def start(cls, settings: Settings) -> "InferenceService":
        """Load the model, probe its outputs, read labels and warm it up (blocking)."""
        started = time.monotonic()
        loaded = load_model(settings)
        runner = Runner(loaded.model, settings.device, loaded.signature)
        signature = runner.probe(loaded.signature, settings.output_names)
        labels_path = find_labels(settings.model_path, settings.labels)
        labels = read_labels(labels_path) if labels_path else None
        service = cls(settings, loaded.facts, loaded.parameters, runner, signature, labels)
        service.warm_up()
        service.load_seconds = time.monotonic() - started
        log.info("model %r ready in %.2fs", service.name, service.load_seconds)
        return service

    def warm_up(self) -> None:
        """A few passes on example data, so the first request is not the slow one."""
        batch = [sample[np.newaxis] for sample in self.signature.example_sample()]
        for _ in range(WARMUP_PASSES):
            self.runner.forward(batch)

    def decode(self, body: bytes) -> Decoded:
        """Validate a ``{"instances": [...]}`` body; raises a 4xx ServeError when it is bad."""
        decoded = self.decoder.decode(body)
        self.postprocess.check(decoded.top_k)
        return decoded

    async def infer(self, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Run validated arrays through the model; a model exception becomes a 500."""
        try:
            return await self.runner.run(arrays)
        except Exception:
            log.exception("model %r failed on a batch of %d", self.name, len(arrays[0]))
            raise ModelFailure(
                "the model failed on this input; the server log has details"
            ) from None

    async def predict_json(self, body: bytes) -> bytes:
        """The simple protocol end to end: JSON body in, serialised JSON predictions out."""
        decoded = self.decode(body)
        outputs = await self.infer(decoded.arrays)
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
            "signature": self.signature.describe(),
            "labels": self.labels,
            "max_instances": self.settings.max_instances,
            "load_seconds": round(self.load_seconds, 3),
        }

    def close(self) -> None:
        self.runner.close()
