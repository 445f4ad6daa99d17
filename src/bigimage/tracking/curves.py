"""A training run's learning curves as one figure (loss with val_loss, accuracy with val_accuracy, the
judged epoch marked), drawn on a bare Agg canvas so it works headless and in any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

ARTIFACT = "learning_curves.png"
#: One panel per quantity: (y label, the training metric, its validation twin).
PANELS = (("loss", "loss", "val_loss"), ("accuracy", "accuracy", "val_accuracy"))


def long_frame(
    history: pd.DataFrame | Sequence[Mapping[str, float]], metrics: Sequence[str], keys: Sequence[str] = ("epoch",)
) -> pd.DataFrame:
    """One row per epoch and metric (``keys``, ``metric``, ``value``) of a history (a frame, or entries
    with ``epoch``): what the learning-curve figures plot, here and in the analysis report."""
    frame = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    present = [metric for metric in metrics if metric in frame.columns]
    if frame.empty or not present:
        return pd.DataFrame(columns=[*keys, "metric", "value"])
    frame = frame.assign(epoch=frame["epoch"].astype(int))
    return frame.melt(id_vars=list(keys), value_vars=present, var_name="metric").dropna(subset=["value"])


def figure(history: Sequence[Mapping[str, float]], judged_epoch: int, title: str = "") -> Any:
    """The two panels of :data:`PANELS` over ``history`` (entries with ``epoch`` and the metrics), the
    judged epoch as a dashed line in each (none when it is negative: no epoch was judged)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (label, train, validation) in zip(fig.subplots(1, len(PANELS)), PANELS):
        data = long_frame(history, (train, validation))
        if not data.empty:
            sns.lineplot(data=data, x="epoch", y="value", hue="metric", marker="o", ax=ax)
        if judged_epoch >= 0:
            ax.axvline(judged_epoch, color="crimson", linestyle="--", linewidth=1, label=f"judged epoch {judged_epoch}")
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch (0-based)")
        ax.set_ylabel(label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
