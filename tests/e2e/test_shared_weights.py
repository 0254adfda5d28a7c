"""``--workers 2`` hold the weights once: each worker maps the model file, and the file's
pages are counted once over both (PSS). Memory, not time: deterministic. The ~800 MB
measurement of whole servers is ``python -m bench.shared_weights`` (the README's figure)."""

from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests import nets
from tests.e2e.conftest import running_ptserve
from tests.e2e.processes import mapped_kib, workers
from tests.e2e.traffic import wait_for

WIDTH = 1024
AS_CLASS = ["--model-class", "tests.nets:Wide"]


def save(fmt: str, folder: Path) -> tuple[Path, list[str]]:
    """nets.Wide (16 MiB of weights) saved as ``fmt``, and the flags that serve it."""
    torch.manual_seed(0)
    model = nets.Wide().eval()
    if fmt == "pickle":
        torch.save(model, path := folder / "wide.pt")
        return path, ["--trust-module", "tests.nets"]
    if fmt == "state_dict":
        torch.save(model.state_dict(), path := folder / "wide.pth")
        return path, AS_CLASS
    if fmt == "safetensors":
        safetensors.torch.save_file(model.state_dict(), path := folder / "wide.safetensors")
        return path, AS_CLASS
    if fmt == "export":
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (torch.zeros(2, WIDTH),), dynamic_shapes=({0: batch},))
        torch.export.save(program, path := folder / "wide.pt2")
        return path, []
    torch.jit.script(model).save(str(path := folder / "wide.ts"))
    return path, ["--input-shape", str(WIDTH)]


def worker_maps(fmt: str, folder: Path) -> tuple[list[tuple[int, int]], int, int]:
    """Each worker's (Rss, Pss) of the model file, the weights' and the file's KiB."""
    path, flags = save(fmt, folder)
    weights_kib = sum(p.numel() * 4 for p in nets.Wide().parameters()) // 1024
    with running_ptserve([str(path), *flags, "--workers", "2"], folder / "log") as server:
        wait_for("two workers", lambda: "with 2 workers" in server.log())
        maps = [mapped_kib(pid, path) for pid in workers(server.process.pid)]
    return maps, weights_kib, path.stat().st_size // 1024


@pytest.mark.parametrize("fmt", ["pickle", "state_dict", "safetensors", "export"])
def test_two_workers_map_one_copy_of_the_weights(tmp_path: Path, fmt: str) -> None:
    maps, weights_kib, file_kib = worker_maps(fmt, tmp_path)
    assert len(maps) == 2
    for rss, _ in maps:  # every weight is in each worker, as pages of the mapped file...
        assert rss >= weights_kib, maps
    assert sum(pss for _, pss in maps) <= 1.05 * file_kib, maps  # ...counted once over both


def test_control_torchscript_weights_are_copies_and_the_check_sees_it(tmp_path: Path) -> None:
    """torch.jit.load reads the weights into each process's own memory (no mmap in torch):
    the file is not mapped, so the check above would fail for it."""
    maps, weights_kib, _ = worker_maps("torchscript", tmp_path)
    assert all(rss < weights_kib / 10 for rss, _ in maps), maps
