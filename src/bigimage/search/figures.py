"""The study's figures as PNGs (seaborn over ``study.trials_dataframe()``; no browser, no plotly):
optimisation history, parameter importance and, for two objectives, the Pareto front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def optimization_history(trials: pd.DataFrame, metric: str, maximize: bool) -> Figure:
    """``trials``: ``number``, ``value``, ``state`` (COMPLETE, PRUNED, ...) per trial."""
    fig, ax = plt.subplots(figsize=(7, 4))
    shown = trials[trials["state"].isin(["COMPLETE", "PRUNED"]) & trials["value"].notna()]
    sns.scatterplot(data=shown, x="number", y="value", hue="state", style="state", ax=ax, s=60)
    complete = shown[shown["state"] == "COMPLETE"].sort_values("number")
    best = complete["value"].cummax() if maximize else complete["value"].cummin()
    ax.step(complete["number"], best, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric + (" (pruned: last reported)" if (shown["state"] == "PRUNED").any() else ""))
    ax.set_title(f"Optimisation history ({'higher' if maximize else 'lower'} is better)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def param_importances(importances: dict[str, dict[str, float]]) -> Figure:
    """``importances``: objective -> parameter -> importance (summing to 1 per objective)."""
    rows = [
        {"objective": objective, "parameter": name, "importance": value}
        for objective, values in importances.items()
        for name, value in values.items()
    ]
    table = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, table["parameter"].nunique() * len(importances))))
    sns.barplot(data=table, y="parameter", x="importance", hue="objective", ax=ax, orient="h")
    ax.set_title("Parameter importance (Optuna, finished trials)")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def pareto_front(trials: pd.DataFrame, x: str, y: str, front: pd.DataFrame) -> Figure:
    """Finished trials by two objectives (``x``, ``y`` columns) with the Pareto-optimal ``front``."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sns.scatterplot(data=trials, x=x, y=y, color="lightgray", ax=ax, s=50, label="trial")
    ordered = front.sort_values(x)
    ax.plot(ordered[x], ordered[y], "o-", color="crimson", label="Pareto front")
    for _, row in ordered.iterrows():
        ax.annotate(str(int(row["number"])), (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_title("Pareto front (numbers: trials)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig
