"""Do ``--workers N`` hold a model's weights once? Memory of one vs two workers, per format.

    python -m bench.shared_weights                          # ~800 MB of weights, every format
    python -m bench.shared_weights --mb 200 --formats safetensors export

Each format's file of the same model is served with ``--workers 1`` and ``--workers 2``; once
the server is ready (its warm-up has run every weight through the model, in every worker) and
has answered a few requests, the PSS of every process of its process group is summed: the
supervising parent and multiprocessing's resource tracker included, shared pages counted once.
The second worker's cost is the difference; the issue asks for well under half the weights.
"""

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from bench.procs import free_port, start_server, stop_server, wait_until_serving
from bench.procstats import file_pss_mib, group_memory

FORMATS = ("pickle", "state_dict", "safetensors", "export", "torchscript")
WIDTH = 4096
MIB = 1024 * 1024


class Wide(nn.Module):
    """``layers`` Linear(width, width) with ReLUs: 4096 wide, 64 MiB of weights a layer."""

    def __init__(self, layers: int = 12, width: int = WIDTH) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def save(fmt: str, model: Wide, folder: Path) -> tuple[Path, list[str]]:
    """The model saved as ``fmt``, and the flags that serve it."""
    kwargs = json.dumps({"layers": len(model.layers)})
    as_class = ["--model-class", "bench.shared_weights:Wide", "--model-kwargs", kwargs]
    if fmt == "pickle":
        torch.save(model, path := folder / "wide.pt")
        return path, ["--trust-module", "bench.shared_weights"]
    if fmt == "state_dict":
        torch.save(model.state_dict(), path := folder / "wide.pth")
        return path, as_class
    if fmt == "safetensors":
        safetensors.torch.save_file(model.state_dict(), path := folder / "wide.safetensors")
        return path, as_class
    example = (torch.zeros(2, WIDTH),)
    if fmt == "export":
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
        torch.export.save(program, path := folder / "wide.pt2")
        return path, []
    torch.jit.script(model).save(str(path := folder / "wide.ts"))
    return path, ["--input-shape", str(WIDTH)]


def served_pss_mib(path: Path, flags: list[str], workers: int, folder: Path) -> tuple[float, float]:
    """Summed PSS of a ready server of ``path`` with ``workers`` workers, and the part of it
    that maps the model file."""
    port = free_port()
    command = [sys.executable, "-m", "ptserve", "serve", str(path), *flags, "--port", str(port),
               "--workers", str(workers), "--max-batch-size", "4", "--no-access-log",
               "--log-format", "text"]  # fmt: skip
    log = folder / f"{path.suffix[1:]}-w{workers}.log"
    server = start_server(command, port, log)
    try:
        body = json.dumps({"instances": [[0.5] * WIDTH]}).encode()
        wait_until_serving(server, "/predict", body, 600)
        deadline = time.monotonic() + 600
        while workers > 1 and f"with {workers} workers" not in log.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every worker started: {log}")
            time.sleep(0.2)
        for _ in range(8):
            wait_until_serving(server, "/predict", body, 60)
        return group_memory(server.pgid).pss_mib, file_pss_mib(server.pgid, path)
    finally:
        stop_server(server, 60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shared_weights", description=__doc__)
    parser.add_argument("--mb", type=int, default=800, help="about this many MB of weights")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args = parser.parse_args(argv)
    layers = max(1, round(args.mb * 1e6 / ((WIDTH + 1) * WIDTH * 4)))
    torch.manual_seed(0)
    # By its importable name: a pickle of __main__.Wide (python -m) would not load elsewhere.
    model = importlib.import_module("bench.shared_weights").Wide(layers).eval()
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptserve-shared-") as tmp:
        folder = Path(tmp)
        for fmt in args.formats:
            path, flags = save(fmt, model, folder)
            (one, one_file), (two, two_file) = (
                served_pss_mib(path, flags, n, folder) for n in (1, 2)
            )
            path.unlink()
            rows.append({
                "format": fmt, "weights_mib": round(weights_mib), "one_worker_pss_mib": one,
                "two_workers_pss_mib": two, "ratio": round(two / one, 2),
                "second_worker_mib": round(two - one),
                "second_worker_share_of_weights": round((two - one) / weights_mib, 2),
                "file_mapped_pss_mib": [one_file, two_file],
            })  # fmt: skip
            sys.stderr.write(f"{rows[-1]}\n")
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
