"""The results plot: req/s and p99 per server and concurrency, one column per model."""

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display here
import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bench.inprocess import InProcessResult
from bench.runner import Point, ServerRun


def _req_per_s(point: Point) -> float | None:
    return point.load.req_per_s


def _p99_ms(point: Point) -> float | None:
    return point.load.p99_ms


# Draw the in-process line only when it does not squash the bars (the MLP's is ~100x).
IN_PROCESS_LINE_SPAN = 10.0

_PANELS: tuple[tuple[str, Callable[[Point], float | None]], ...] = (
    ("req/s (log)", _req_per_s),
    ("p99 ms (log)", _p99_ms),
)


def _top(runs: Sequence[ServerRun]) -> float:
    return max((p.load.req_per_s for r in runs for p in r.points), default=0.0)


def plot_results(
    runs: Sequence[ServerRun],
    in_process: Sequence[InProcessResult],
    models: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """Grouped bars (log scale) of req/s and p99 latency; dashed line = in-process limit."""
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 8.5), squeeze=False)
    names = list(dict.fromkeys(r.server for r in runs if r.points))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for col, model in enumerate(models):
        model_runs = [r for r in runs if r.model == model and r.points]
        concurrencies = sorted({p.load.concurrency for r in model_runs for p in r.points})
        width = 0.8 / max(len(model_runs), 1)
        for row, (label, getter) in enumerate(_PANELS):
            ax = axes[row][col]
            for i, run in enumerate(model_runs):
                by_c = {p.load.concurrency: v for p in run.points if (v := getter(p)) is not None}
                xs = [j + i * width for j, c in enumerate(concurrencies) if c in by_c]
                ys = [by_c[c] for c in concurrencies if c in by_c]
                ax.bar(xs, ys, width, label=run.server, color=colours[run.server])
            centre = width * (len(model_runs) - 1) / 2
            ax.set_xticks([j + centre for j in range(len(concurrencies))])
            ax.set_xticklabels([f"c={c}" for c in concurrencies])
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{model}: {label.split(' ')[0]}")
            ax.grid(axis="y", which="both", alpha=0.3)
            best = next((r.best for r in in_process if r.model == model), None)
            if row == 0 and best is not None:
                ax.set_title(f"{model}: req/s (in-process best {best.samples_per_s:,.0f}/s)")
                if best.samples_per_s <= IN_PROCESS_LINE_SPAN * _top(model_runs):
                    ax.axhline(best.samples_per_s, color="black", linestyle="--", linewidth=1)
    handles: list[Artist] = [Patch(color=colours[name], label=name) for name in names]
    handles.append(Line2D([], [], color="black", linestyle="--", label="in-process best"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
