"""Command-line options of ``python -m bench``."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.config import DEFAULT_OUT_DIR, PRIMARY_PTSERVE, Options
from bench.models import MODEL_NAMES
from bench.registry import all_servers

FULL_DURATION_S = 8
QUICK_DURATION_S = 3


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--list-servers`` prints the registry."""
    servers = ", ".join(f"{s.name}{'' if s.default else ' (opt-in)'}" for s in all_servers())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ptserve against textbook, ceiling and LitServe servers.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION_S} s per point and a shorter in-process measurement",
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        help=f"seconds per load point (default {FULL_DURATION_S})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="seconds of unrecorded load before each point (default 1)",
    )
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument(
        "--servers",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"servers to run (default: all but opt-in). Known: {servers}",
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument(
        "--no-in-process", action="store_true", help="skip the in-process model limit"
    )
    parser.add_argument(
        "--primary", default=PRIMARY_PTSERVE, help="ptserve configuration the target ratios use"
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds a server may take to answer its first 200",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR, help="where results.json and throughput.png go"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep models, bodies and server logs here (default: temp dir)",
    )
    return parser


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Parse ``argv`` into validated ``Options``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency values must be >= 1")
    quick: bool = args.quick
    duration = args.duration or (QUICK_DURATION_S if quick else FULL_DURATION_S)
    return Options(
        models=tuple(args.models),
        servers=tuple(args.servers) if args.servers else (),
        concurrencies=tuple(args.concurrency),
        duration_s=duration,
        warmup_s=args.warmup if args.warmup is not None else 1,
        start_timeout_s=args.start_timeout,
        stop_timeout_s=10.0,
        wrk_threads=args.wrk_threads,
        wrk_timeout_s=10,
        in_process=not args.no_in_process,
        in_process_round_s=0.1 if quick else 0.2,
        in_process_rounds=6 if quick else 12,
        in_process_batch_sizes=(1, 8, 32),
        in_process_threads=(1, 2),
        primary=args.primary,
        out_dir=args.out,
        workdir=args.workdir,
        quick=quick,
    )
