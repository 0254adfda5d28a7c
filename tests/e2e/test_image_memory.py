"""Image memory is bounded: twenty concurrent uploads of 25-megapixel PNGs (~80 KB each, a
100 MB buffer each once decoded) keep the real server's peak RSS within its image budget plus
a stated margin, and its RSS falls back to where it was afterwards.

Memory, not time, is asserted: the peak is the kernel's high-water mark (VmHWM, reset just
before the burst), so no sampling can miss it.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import running_ptserve
from tests.images import large_png, save_colour_model

CONCURRENT = 20
SIDE = 5000  # 25 megapixels: the default max_image_pixels
BUDGET_PIXELS = 2 * SIDE * SIDE  # two such images decoded at a time
DECODED_BYTES_PER_PIXEL = 4  # Pillow keeps RGB as RGBX
MARGIN_MB = 150  # bodies, thread stacks, allocator slack: measured ~0-30 MB above the budget
RETURNED_MB = 50  # what may stay resident after the burst (measured: ~2 MB)
HANG_GUARD_S = 600.0


def status_mb(pid: int, field: str) -> float:
    """A memory figure of a process from /proc (kB there), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_burst_of_large_images_stays_within_the_budget_and_returns_its_memory(
    tmp_path: Path,
) -> None:
    model = save_colour_model(tmp_path / "model")
    png = large_png(SIDE, SIDE)
    flags = [
        str(model), "--input-shape", "3", "8", "8", "--no-access-log",
        "--image-budget-pixels", str(BUDGET_PIXELS),
        "--timeout-ms", str(int(HANG_GUARD_S * 1000)),  # images wait for the budget, no 503s
    ]  # fmt: skip
    with running_ptserve(flags, tmp_path / "server.log") as server:
        pid = server.process.pid

        def upload(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.base_url, timeout=HANG_GUARD_S) as client:
                return client.post("/predict", files={"file": ("big.png", png, "image/png")})

        assert upload(0).json()["predictions"][0]["label"] == "red"  # warm: imports, threads
        before = status_mb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        with ThreadPoolExecutor(CONCURRENT) as pool:
            responses = list(pool.map(upload, range(CONCURRENT)))
        peak, after = status_mb(pid, "VmHWM"), status_mb(pid, "VmRSS")

    assert [r.status_code for r in responses] == [200] * CONCURRENT, responses[0].text
    assert {r.json()["predictions"][0]["label"] for r in responses} == {"red"}
    budget_mb = BUDGET_PIXELS * DECODED_BYTES_PER_PIXEL / 2**20
    figures = f"RSS before {before:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB"
    assert peak <= before + budget_mb + MARGIN_MB, f"{figures}; budget {budget_mb:.0f} MB"
    assert after <= before + RETURNED_MB, figures
