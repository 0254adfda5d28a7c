"""The model alone in this process: the samples/s ceiling no server can beat."""

import time
from dataclasses import dataclass

import torch

from bench.models import ModelArtifact, load_sample_batch


@dataclass(frozen=True)
class InProcessPoint:
    """Best of several timed rounds for one batch size and thread count."""

    batch_size: int
    threads: int
    samples_per_s: float
    ms_per_batch: float


@dataclass(frozen=True)
class InProcessResult:
    """Every (batch size, threads) point for one model and the best of them."""

    model: str
    points: list[InProcessPoint]
    best: InProcessPoint


def _best_seconds_per_batch(
    model: torch.nn.Module, x: torch.Tensor, round_s: float, rounds: int
) -> float:
    best = float("inf")
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        while True:
            model(x)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= round_s:
                break
        best = min(best, elapsed / calls)
    return best


def measure_in_process(
    artifact: ModelArtifact,
    batch_sizes: tuple[int, ...],
    threads: tuple[int, ...],
    round_s: float,
    rounds: int,
) -> InProcessResult:
    """Time the saved model for each batch size and torch thread count (warm-up first)."""
    # The file was written by the harness itself, so a full unpickle is safe here.
    model = torch.load(artifact.path, weights_only=False)
    model.eval()
    previous_threads = torch.get_num_threads()
    points = []
    try:
        with torch.inference_mode():
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                for batch_size in batch_sizes:
                    x = load_sample_batch(artifact, batch_size)
                    _best_seconds_per_batch(model, x, round_s / 2, 1)  # warm-up
                    seconds = _best_seconds_per_batch(model, x, round_s, rounds)
                    points.append(
                        InProcessPoint(
                            batch_size=batch_size,
                            threads=n_threads,
                            samples_per_s=round(batch_size / seconds, 1),
                            ms_per_batch=round(seconds * 1e3, 4),
                        )
                    )
    finally:
        torch.set_num_threads(previous_threads)
    best = max(points, key=lambda p: p.samples_per_s)
    return InProcessResult(model=artifact.name, points=points, best=best)
