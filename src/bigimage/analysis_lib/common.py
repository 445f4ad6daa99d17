"""Shared pieces of the analysis scripts: command-line options, JSON output, statistics, Markdown."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ParamSpec

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

from bigimage.tracking import liveness, query

EXIT_NO_RUNS = 3
P = ParamSpec("P")


def script_parser(script: str, description: str) -> argparse.ArgumentParser:
    """A script's parser with ``--tracking-uri`` and ``--json``."""
    parser = argparse.ArgumentParser(prog=f"analysis/{script}", description=description)
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlruns/mlflow.db)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout and nothing else")
    return parser


def source_parser(script: str, description: str) -> argparse.ArgumentParser:
    """:func:`script_parser` with ``--experiment`` / ``--parent-run``: the same in every script that analyses runs."""
    parser = script_parser(script, description)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--experiment",
        default=None,
        help=f"experiment name (default: $MLFLOW_EXPERIMENT_NAME, else '{query.DEFAULT_EXPERIMENT}')",
    )
    which.add_argument(
        "--parent-run",
        default=None,
        help="id of a parent run (a sweep or a pipeline): analyse all its descendants instead of an experiment",
    )
    return parser


def save_figure(figure: Any, path: str | os.PathLike, title: str | None = None, title_y: float = 0.98) -> None:
    """Title the figure, write it and close it (pyplot keeps every figure alive until closed)."""
    import matplotlib.pyplot as plt

    if title:
        figure.suptitle(title, y=title_y, fontsize=10)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def fail(message: str, code: int = EXIT_NO_RUNS) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def exits_without_runs(main: Callable[P, int]) -> Callable[P, int]:
    """A script's ``main`` that says why and exits :data:`EXIT_NO_RUNS` on :class:`query.NoRunsError`."""

    @functools.wraps(main)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except query.NoRunsError as exc:
            return fail(str(exc))

    return guarded


def positive_metrics(row: pd.Series, keys: Sequence[str]) -> tuple[dict[str, float], str | None]:
    """The run's metrics ``keys`` when each is a positive finite number, else why not."""
    read = {key: query.metric(row, key) for key in keys}
    values = {key: value for key, value in read.items() if value is not None and math.isfinite(value) and value > 0}
    bad = [key for key in keys if key not in values]
    return values, f"missing or non-positive metric(s): {', '.join(bad)}" if bad else None


def finish(args: argparse.Namespace, result, usable: bool, empty_message: str, write_tags, render_text) -> int:
    """The common end of a script: say why nothing was usable, else tag the runs and print the result."""
    if not usable:
        for excluded in result.excluded:
            print(f"excluded {excluded.run_id}: {excluded.reason}", file=sys.stderr)
        return fail(empty_message)
    if not args.no_write_tags:
        write_tags(result)
    return emit(args, result, render_text)


def emit(args: argparse.Namespace, result, render_text) -> int:
    """Print ``result``: its JSON with ``--json``, else ``render_text(result)``."""
    sys.stdout.write(dump_json(result.as_dict()) + "\n" if args.json else render_text(result))
    return 0


@contextmanager
def analysis_run(
    selection: query.RunSelection, parent_run_id: str | None, name: str, tags: dict[str, str] | None = None
) -> Iterator[tuple[MlflowClient, str]]:
    """A new run tagged ``task=analysis`` (a child of ``parent_run_id`` when given), created first so what
    is written can name it; KILLED on Ctrl-C or SIGTERM, FAILED on an error."""
    client = query.client_for(selection.tracking_uri)
    source = {MLFLOW_SOURCE_NAME: os.path.basename(sys.argv[0]) or "python", MLFLOW_SOURCE_TYPE: "LOCAL"}
    all_tags = {"task": "analysis", **source, **liveness.process_tags(), **(tags or {})}
    if parent_run_id:
        all_tags[query.PARENT_TAG] = parent_run_id
    run = client.create_run(selection.experiment_id, tags=all_tags, run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_id = run.info.run_id
    try:
        yield client, run_id
    except BaseException as error:
        client.set_terminated(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _clean(obj):
    """Make ``obj`` JSON-safe: NaN/inf -> null, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def dump_json(document: dict) -> str:
    return json.dumps(_clean(document), indent=2, allow_nan=False, sort_keys=False)


def print_json(document: dict) -> None:
    sys.stdout.write(dump_json(document) + "\n")
    sys.stdout.flush()


# --- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean of repeated measurements with a two-sided Student-t interval (none, ``method`` ``none``, for one)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None
    method: str
    confidence: float

    def overlaps(self, other: Interval) -> bool | None:
        """``None`` if either side has no interval."""
        if self.low is None or self.high is None or other.low is None or other.high is None:
            return None
        return not (self.high < other.low or other.high < self.low)

    def text(self, fmt: str = "{:.4g}") -> str:
        if self.low is None:
            return f"{fmt.format(self.mean)} (n=1, no interval)"
        return (
            f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}] "
            f"(n={self.n}, {int(round(self.confidence * 100))}% CI)"
        )

    def as_dict(self) -> dict:
        """The fields under their JSON names (``low`` and ``high`` as ``ci_low``, ``ci_high``; ``ci_method``)."""
        renamed = {"low": "ci_low", "high": "ci_high", "method": "ci_method"}
        return {renamed.get(key, key): value for key, value in asdict(self).items()}


@dataclass
class Ranked:
    """A configuration or cluster shape (``key``) in a ranking, with the score it is ranked by."""

    key: dict
    score: Interval
    run_ids: list[str]
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        score = {f"score_{k}": v for k, v in self.score.as_dict().items()}
        return {**self.key, **score, "run_ids": self.run_ids, **self.extra}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    from scipy import stats

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        raise ValueError("no finite values")
    mean = float(data.mean())
    if n == 1:
        return Interval(mean, None, None, 1, None, "none", confidence)
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, "t", confidence)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion: within [0, 1], and not empty at 0 or all successes."""
    from scipy import stats

    if trials <= 0:
        raise ValueError("no trials")
    z = float(stats.norm.ppf((1.0 + confidence) / 2.0))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


# --- Markdown ---------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table with aligned columns: the one table of the reports and the terminal."""
    if not rows:
        return "_(none)_\n"
    columns = list(columns or rows[0].keys())
    cells = [list(columns), *([_cell(row.get(c)) for c in columns] for row in rows)]
    widths = [max(3, *(len(line[i]) for line in cells)) for i in range(len(columns))]
    cells.insert(1, ["-" * w for w in widths])
    return "\n".join("| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in cells) + "\n"
