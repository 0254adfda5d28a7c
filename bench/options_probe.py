"""Would torch.compile or several inference threads per model help? In-process measurements.

    python -m bench.options_probe        # about 2 minutes; prints a table

Issue #3 asked to keep either option only if a benchmark shows a gain; this is that benchmark.
"""

import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.models import create_model, load_sample_batch

ROUND_S = 3.0


def rate(forward: Callable[[], None], samples: int, workers: int = 1) -> float:
    """Samples per second of ``workers`` threads each calling ``forward`` for ROUND_S."""
    counts = [0] * workers
    stop = time.monotonic() + ROUND_S

    def loop(index: int) -> None:
        while time.monotonic() < stop:
            forward()
            counts[index] += samples

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / ROUND_S


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ptserve-options-"))
    rows = []
    for name in ("mlp", "conv"):
        artefact = create_model(name, folder)
        model = torch.load(artefact.path, weights_only=False).eval()
        for threads, workers in ((2, 1), (1, 1), (1, 2)):
            torch.set_num_threads(threads)
            torch.compiler.reset()  # compile afresh for this thread setting
            compiled = torch.compile(model)
            for batch in (1, 8):
                x = load_sample_batch(artefact, batch)

                def eager(m: Callable[..., object] = model, x: torch.Tensor = x) -> None:
                    with torch.inference_mode():
                        m(x)

                def fast(m: Callable[..., object] = compiled, x: torch.Tensor = x) -> None:
                    with torch.inference_mode():
                        m(x)

                for _ in range(3):  # compile (and recompile for a new shape) outside the timing
                    eager()
                    fast()
                rows.append((name, batch, threads, workers, "eager", rate(eager, batch, workers)))
                rows.append((name, batch, threads, workers, "compiled", rate(fast, batch, workers)))
    sys.stdout.write("model  batch  torch threads  inference threads  mode      samples/s\n")
    for name, batch, threads, workers, mode, value in rows:
        sys.stdout.write(
            f"{name:5}  {batch:5}  {threads:13}  {workers:17}  {mode:8}  {value:10,.0f}\n"
        )


if __name__ == "__main__":
    main()
