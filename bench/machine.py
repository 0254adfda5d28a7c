"""A description of the machine and software a run measured."""

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.loadgen import wrk_version

PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "orjson", "litserve", "ptserve")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_gib() -> float | None:
    """Total RAM from /proc/meminfo, in GiB."""
    try:
        with Path("/proc/meminfo").open() as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the serving packages (None when missing)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the box skews every number."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, kernel, Python, torch, packages, wrk and the date."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "packages": package_versions(),
        "wrk": wrk_version(),
        "load_average": load_average(),
    }
