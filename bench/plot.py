"""The results plot: req/s and p99 per server and concurrency, one column per model."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display here
import matplotlib.pyplot as plt

from bench.inprocess import InProcessResult
from bench.runner import ServerRun


def plot_results(
    runs: Sequence[ServerRun],
    in_process: Sequence[InProcessResult],
    models: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """Grouped bars (log scale) of req/s and p99 latency; dashed line = in-process limit."""
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        model_runs = [r for r in runs if r.model == model and r.points]
        concurrencies = sorted({p.load.concurrency for r in model_runs for p in r.points})
        width = 0.8 / max(len(model_runs), 1)
        for row, (label, getter) in enumerate(
            (("req/s (log)", lambda p: p.load.req_per_s), ("p99 ms (log)", lambda p: p.load.p99_ms))
        ):
            ax = axes[row][col]
            for i, run in enumerate(model_runs):
                by_c = {p.load.concurrency: getter(p) for p in run.points}
                xs = [j + i * width for j, c in enumerate(concurrencies) if c in by_c]
                ys = [by_c[c] for c in concurrencies if c in by_c]
                ax.bar(xs, ys, width, label=run.server)
            ax.set_xticks(
                [j + width * (len(model_runs) - 1) / 2 for j in range(len(concurrencies))]
            )
            ax.set_xticklabels([f"c={c}" for c in concurrencies])
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{model}: {label.split(' ')[0]}")
            ax.grid(axis="y", which="both", alpha=0.3)
            best = next((r.best for r in in_process if r.model == model), None)
            if row == 0 and best is not None:
                ax.axhline(
                    best.samples_per_s,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"in-process best ({best.samples_per_s:,.0f}/s)",
                )
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
