"""LitServe serving the benchmark model with server-side batching switched on.

Run: ``python -m bench.servers.litserve_server MODEL_PATH --port PORT
[--max-batch-size 16] [--batch-timeout 0.005] [--fast-queue] [--torch-threads N]``.
LitServe forks an inference worker and an API-server process; the harness stops the
whole process group.
"""

import argparse
import os
from typing import Any

import litserve as ls  # type: ignore[import-untyped]
import torch


class ModelAPI(ls.LitAPI):  # type: ignore[misc]
    """Decode ``{"instances": [...]}``, batch across requests, answer ``{"predictions": ...}``."""

    def __init__(
        self, model_path: str, max_batch_size: int, batch_timeout: float, torch_threads: int
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_path = model_path
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        """Load the model once in the inference worker."""
        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        # The file was written by the harness itself, so a full unpickle is safe here.
        self.model = torch.load(self.model_path, weights_only=False, map_location=device)
        self.model.eval()

    def decode_request(self, request: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        """Turn one request's instances into a tensor of shape (n, *sample)."""
        return torch.tensor(request["instances"], dtype=torch.float32)

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Keep the per-request tensors so outputs can be split back by request."""
        return inputs

    def predict(self, x: list[torch.Tensor] | torch.Tensor, **kwargs: Any) -> Any:
        """Run one forward over every request in the batch."""
        parts = x if isinstance(x, list) else [x]
        with torch.inference_mode():
            out = self.model(torch.cat(parts))
        if not isinstance(x, list):
            return out
        return list(out.split([p.shape[0] for p in parts]))

    def unbatch(self, output: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs are already split per request in ``predict``."""
        return output

    def encode_response(self, output: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """Return the raw outputs as nested lists."""
        return {"predictions": output.tolist()}


def main() -> None:
    """Parse argv and serve on 127.0.0.1 with one CPU inference worker."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_path")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8000")))
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--fast-queue", action="store_true", help="use LitServe's ZeroMQ queue")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="intra-op threads (0: torch's default)"
    )
    args = parser.parse_args()
    api = ModelAPI(args.model_path, args.max_batch_size, args.batch_timeout, args.torch_threads)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.fast_queue)
    # host is passed explicitly: LitServer.run defaults to 0.0.0.0.
    server.run(
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
