"""Speed-test rows as a table, summary metrics, a figure and a printed overview; logged to MLflow
under the contract's names (docs/contracts.md, task 2)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bigimage.tracking import names

ROW_COLUMNS = list(names.SPEEDTEST_COLUMNS)
EXTRA_COLUMNS = ["repeated", "warmup_batches", "available_images", "partition"]
SUMMARY_ARTIFACT = "speedtest_summary.json"
CSV_ARTIFACT = "speedtest.csv"
FIGURE_ARTIFACT = "speedtest.png"


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame in grid order, contract columns first."""
    frame = pd.DataFrame(rows)
    columns = ROW_COLUMNS + [c for c in EXTRA_COLUMNS if c in frame.columns]
    columns += [c for c in frame.columns if c not in columns]
    frame = frame.reindex(columns=columns)
    return frame.sort_values(["source", "batch_size", "batch_number", "repetition"]).reset_index(drop=True)


def _medians(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame.groupby(["source", "batch_size"])[column].median()


def _speedup(frame: pd.DataFrame) -> float | None:
    """Median images/s of all tfrecord rows over that of all files rows; None unless both sources ran."""
    if not {"files", "tfrecord"} <= set(frame["source"]):
        return None
    overall = frame.groupby("source")["images_per_second"].median()
    return float(overall["tfrecord"] / overall["files"])


def summary_metrics(frame: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for (source, batch_size), value in _medians(frame, "images_per_second").items():
        metrics[f"images_per_second.{source}.bs{int(batch_size)}"] = float(value)
    speedup = _speedup(frame)
    if speedup is not None:
        metrics[names.TFRECORD_SPEEDUP] = speedup
    metrics["speedtest.rows"] = float(len(frame))
    if "repeated" in frame.columns:
        metrics["speedtest.repeated_rows"] = float(frame["repeated"].astype(bool).sum())
    return metrics


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Median ``images_per_second`` and ``bytes_per_second`` per source and batch size, and the batch size's
    ``tfrecord_speedup`` when both sources ran."""
    summary = frame.groupby(["source", "batch_size"])[["images_per_second", "bytes_per_second"]].median().reset_index()
    if {"files", "tfrecord"} <= set(frame["source"]):
        per_size = _medians(frame, "images_per_second").unstack("source")
        speedup = (per_size["tfrecord"] / per_size["files"]).rename(names.TFRECORD_SPEEDUP)
        summary = summary.merge(speedup.reset_index(), on="batch_size", how="left")
    return summary


def format_table(frame: pd.DataFrame) -> str:
    """Median images/s per source and batch size, the speed-up, and which rows repeated the data."""
    table = _medians(frame, "images_per_second").unstack("source")
    if {"files", "tfrecord"} <= set(table.columns):
        table["speedup"] = table["tfrecord"] / table["files"]
    table.index.name = "batch size"
    table.columns.name = None
    lines = ["Speed test: median images/s over batch numbers and repetitions", table.round(2).to_string()]
    speedup = _speedup(frame)
    if speedup is not None:
        lines.append(f"TFRecord over files speed-up: {speedup:.2f}x")
    if "repeated" in frame.columns and frame["repeated"].any():
        repeated = frame[frame["repeated"].astype(bool)]
        lines.append(
            f"{len(repeated)} of {len(frame)} rows read the data more than once (speedtest.on_short_data=repeat; "
            "column `repeated`)"
        )
    return "\n".join(lines)


def figure(frame: pd.DataFrame) -> Any:
    """Images/s against batch size per source: median line, min-max band, one dot per row; on a bare Agg
    canvas (no pyplot, no global backend switch), so it works headless and in threads."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    encoding = {"data": frame, "x": "batch_size", "y": "images_per_second", "hue": "source", "ax": ax}
    sns.lineplot(**encoding, estimator="median", errorbar=("pi", 100), marker="o")
    sns.stripplot(**encoding, native_scale=True, dodge=False, jitter=0.08, alpha=0.45, size=3.5, legend=False)
    sizes = sorted(frame["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(int(size)) for size in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.set_title(
        "Read speed: line = median over batch numbers and repetitions,\nband = min to max, dots = single rows",
        fontsize=10,
    )
    return fig


def log_results(frame: pd.DataFrame, metrics: dict[str, float]) -> None:
    import mlflow

    mlflow.log_table(frame, names.SPEEDTEST_TABLE)
    mlflow.log_table(summary_frame(frame), SUMMARY_ARTIFACT)
    mlflow.log_text(frame.to_csv(index=False), CSV_ARTIFACT)
    mlflow.log_figure(figure(frame), FIGURE_ARTIFACT)
    mlflow.log_metrics(metrics)
