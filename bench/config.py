"""Run options and the list of ptserve configurations under test."""

from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUT_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class PtserveConfig:
    """One way of starting ptserve: a name for the results and extra CLI arguments."""

    name: str
    args: tuple[str, ...]
    default: bool = True


# The one place to change which ptserve configurations are measured.
PTSERVE_CONFIGS: tuple[PtserveConfig, ...] = (
    # What a user runs: every setting at its default (the access log on).
    PtserveConfig("ptserve", ()),
    # The same without the access log, to show what the log costs.
    PtserveConfig("ptserve-no-access-log", ("--no-access-log",)),
    PtserveConfig("ptserve-t2", ("--no-access-log", "--torch-threads", "2"), default=False),
    # The conv net's best measured settings on 2 cores: batching helps it only up to ~8-16 and
    # only with both cores in its forward pass (see bench/README.md).
    PtserveConfig(
        "ptserve-b8t2",
        ("--no-access-log", "--torch-threads", "2", "--max-batch-size", "8"),
        default=False,
    ),
    # ...and with the two opt-in speed-ups: torch.compile and two inference threads (each with
    # one torch thread), so two batches run at once.
    PtserveConfig(
        "ptserve-fast",
        (
            "--no-access-log",
            "--max-batch-size",
            "8",
            "--torch-threads",
            "1",
            "--inference-threads",
            "2",
            "--execution",
            "thread",
            "--compile",
        ),
        default=False,
    ),
    PtserveConfig("ptserve-w2", ("--no-access-log", "--workers", "2"), default=False),
)

# The configuration the target ratios are computed for (overridable with --primary).
PRIMARY_PTSERVE = "ptserve"


@dataclass(frozen=True)
class Options:
    """Everything one run needs to know; built by ``bench.cli``."""

    models: tuple[str, ...]
    servers: tuple[str, ...]
    concurrencies: tuple[int, ...]
    duration_s: int
    warmup_s: int
    start_timeout_s: float
    stop_timeout_s: float
    wrk_threads: int
    wrk_timeout_s: int
    in_process: bool
    in_process_round_s: float
    in_process_rounds: int
    in_process_batch_sizes: tuple[int, ...]
    in_process_threads: tuple[int, ...]
    primary: str
    out_dir: Path
    workdir: Path | None
    quick: bool
