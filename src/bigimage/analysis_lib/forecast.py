"""Forecast time and cost of cluster shapes at any data size from the scaling model (:mod:`.scaling`)
fitted on MLflow runs: runs become points, shapes predictions (docs/forecast.md)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import pandas as pd
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from bigimage.analysis_lib import best_config, common, overfitting, pricing, scaling
from bigimage.config import ClusterConfig, DataprocJob, DataprocShape, compose_option
from bigimage.tracking import names, query

TASKS = ("preprocess", "speedtest")
TASK_TERMS = {"preprocess": scaling.TERMS, "speedtest": (scaling.INTERCEPT, scaling.DATA, scaling.DATA_PER_MACHINE)}
DEFAULT_SHAPES = ("single", "maximal", "four")
DEFAULT_IMAGES = 20000
LOCAL_SHAPE = "local"
SCALING_TAG = "scaling_point"
ON_THIS_MACHINE = ("local", "standalone")
FIT_ORDER = {"dataproc": ("dataproc", "standalone", "local"), "local": ("local", "standalone")}
LABEL = (
    "forecast: predicted by the scaling model fitted on the runs listed, not measured; "
    "costs are at list prices, for the job alone and over the cluster's life (what the bill charges)"
)


def host_cores() -> int:
    """The cores this process may use (its CPU affinity), the ``local`` shape's cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Options:
    images: int = DEFAULT_IMAGES
    shapes: tuple[str, ...] = DEFAULT_SHAPES
    prices_path: str | Path | None = None
    region: str = DataprocJob.region
    core_speed_ratio: float = 1.0
    local_cores: int = field(default_factory=host_cores)
    confidence: float = 0.95
    bootstrap: int = 2000
    source: str = best_config.PREFERRED_SPEEDTEST_SOURCE
    scaling_only: bool = False


# --- cluster shapes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A cluster shape of the ``cluster`` config group: where it runs, its executors, cores and machines."""

    name: str
    deploy: str
    executors: int
    executor_cores: int
    machines: DataprocShape

    @property
    def cores(self) -> int:
        return self.executors * self.executor_cores

    def model_inputs(self, task: str) -> tuple[int, int]:
        """(cores, machines) of a run of ``task``: task 2 times one pipeline on one executor."""
        return (self.executor_cores, 1) if task == "speedtest" else (self.cores, self.executors)

    def hourly(self, prices: pricing.Prices, region: str) -> tuple[float | None, str]:
        """The shape's hourly price on Dataproc in ``region`` (:func:`.pricing.hourly`); this machine is not priced."""
        if self.deploy != "dataproc":
            return None, "not priced: this machine"
        return pricing.hourly(self.machines, region, prices)


def load_shape(name: str, local_cores: int) -> Shape:
    """The option ``name`` of the cluster group, composed by Hydra; ``local`` is this machine with ``local_cores``."""
    try:
        cluster = cast(ClusterConfig, OmegaConf.to_object(compose_option("cluster", name)))
    except MissingConfigException as error:
        raise ValueError(f"unknown shape {name!r}: {error}") from None
    local = name == LOCAL_SHAPE
    return Shape(
        name,
        "local" if local else "dataproc",
        1 if local else cluster.executors,
        local_cores if local or not cluster.executor_cores else cluster.executor_cores,
        cluster.shape,
    )


# --- points from runs -------------------------------------------------------------------------


def _usable(row: pd.Series, excluded: list, scaling_only: bool) -> str | None:
    """The run's deploy kind if it can be a point, else None (and why in ``excluded``)."""
    deploy = query.tag(row, names.SPARK_DEPLOY)
    reason = None
    if row["status"] != "FINISHED":
        reason = f"status {row['status']}: only FINISHED runs are points"
    elif scaling_only and str(row.get(f"tags.{SCALING_TAG}")).lower() != "true":
        reason = f"not tagged {SCALING_TAG}=true"
    elif not isinstance(deploy, str):
        reason = f"no {names.SPARK_DEPLOY} tag: where it ran was not read back from Spark"
    if reason:
        excluded.append(overfitting.Exclusion.of(row, reason))
        return None
    return "dataproc" if deploy == "yarn" else deploy


def _cap(cores: float, deploy: str, local_cores: int) -> float:
    return min(cores, local_cores) if deploy in ON_THIS_MACHINE else cores


def preprocess_points(runs: pd.DataFrame, options: Options) -> tuple[dict[str, list[scaling.Point]], list]:
    """Task 1 points per deploy kind, and the runs left out with why."""
    points: dict[str, list[scaling.Point]] = {}
    excluded: list = []
    for _, row in runs[runs["task"] == "preprocess"].iterrows():
        deploy = _usable(row, excluded, options.scaling_only)
        if deploy is None:
            continue
        values, why = common.positive_metrics(
            row, (names.IMAGES, names.SECONDS, names.SPARK_TOTAL_CORES, names.SPARK_EXECUTORS)
        )
        if why:
            excluded.append(overfitting.Exclusion.of(row, why))
            continue
        cores = _cap(values[names.SPARK_TOTAL_CORES], deploy, options.local_cores)
        points.setdefault(deploy, []).append(
            scaling.Point(
                values[names.IMAGES], cores, int(values[names.SPARK_EXECUTORS]), values[names.SECONDS], row["run_id"]
            )
        )
    return points, excluded


def _read_cores(row: pd.Series, deploy: str, local_cores: int) -> float | None:
    """Cores one speed-test pipeline used: its threads when limited, else what TensorFlow saw."""
    threads = row.get(f"tags.{names.PIPELINE_THREADS}")
    if isinstance(threads, str) and threads.isdigit() and int(threads) > 0:
        return _cap(float(threads), deploy, local_cores)
    if deploy in ON_THIS_MACHINE:
        return float(local_cores)
    total, executors = query.metric(row, names.SPARK_TOTAL_CORES), query.metric(row, names.SPARK_EXECUTORS)
    return total / executors if total and executors else None


def speedtest_points(
    selection: query.RunSelection, runs: pd.DataFrame, options: Options
) -> tuple[dict[str, list[scaling.Point]], list]:
    """Task 2 points (one source) per deploy kind, and the runs left out with why."""
    excluded: list = []
    kinds: dict[str, str] = {}
    for _, row in runs[runs["task"] == "speedtest"].iterrows():
        deploy = _usable(row, excluded, options.scaling_only)
        parallel = str(row.get(f"tags.{names.EFFECTIVE_PARALLELISM}", "1"))
        if deploy and parallel not in ("1", "nan"):
            excluded.append(
                overfitting.Exclusion.of(row, f"{names.EFFECTIVE_PARALLELISM}={parallel}: its timings overlap")
            )
        elif deploy:
            kinds[row["run_id"]] = deploy
    rows, problems, _, by_id = best_config.speedtest_rows(selection, runs[runs["run_id"].isin(kinds)])
    excluded += problems
    points: dict[str, list[scaling.Point]] = {}
    for run_id, group in rows.groupby("run_id", sort=False) if not rows.empty else []:
        mine = group[group["source"] == options.source]
        cores = _read_cores(by_id[run_id], kinds[run_id], options.local_cores)
        if mine.empty or cores is None:
            why = f"no {options.source} rows" if mine.empty else "no cores read back (spark.total_cores)"
            excluded.append(overfitting.Exclusion.of(by_id[run_id], why))
            continue
        point = scaling.Point(float(mine["images"].sum()), cores, 1, float(mine["seconds"].sum()), run_id)
        points.setdefault(kinds[run_id], []).append(point)
    return points, excluded


# --- forecasts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedRatio:
    """How many times faster a Dataproc vCPU runs the per-core work than a core of the fitted runs."""

    value: float
    source: str  # how it was obtained; printed next to every prediction that uses it


def calibrate_ratio(fit: scaling.Fit, dataproc: Sequence[scaling.Point], configured: float) -> SpeedRatio:
    """The ratio that makes ``fit`` (runs on this machine) reproduce the store's Dataproc runs (median
    over those it covers, with a time above its fixed part), else ``configured``."""
    ratios, used = [], []
    for point in dataproc:
        if not fit.covers_machines(point.machines):
            continue
        fixed, per_image = fit.line(point.cores, point.machines)
        if point.seconds > fixed and per_image > 0:
            ratios.append(per_image * point.images / (point.seconds - fixed))
            used.append(point.run_id)
    if ratios:
        value = statistics.median(ratios)
        return SpeedRatio(value, f"assumed: calibrated from Dataproc run(s) {', '.join(used)}")
    why = " (the store's Dataproc runs could not calibrate it)" if dataproc else ""
    return SpeedRatio(configured, f"assumed: --core-speed-ratio{why}")


@dataclass(frozen=True)
class Overhead:
    """What the fitted runs' lives added to their jobs (:attr:`pricing.Life.overhead`), their median."""

    seconds: float
    runs: int
    recorded_startup: int  # of them, the runs that recorded Spark's start-up

    def text(self) -> str:
        if not self.runs:
            return "start-up and the rest of a run: 0 s (no fitted run recorded its job's seconds)"
        startup = "" if self.recorded_startup else "; none recorded its start-up"
        return f"start-up and the rest of a run {self.seconds:.3g} s (median of {self.runs} fitted run(s){startup})"


def overhead(fit: scaling.Fit, lives: dict[str, pricing.Life]) -> Overhead:
    """The median overhead of ``fit``'s runs (:class:`Overhead`)."""
    mine = [lives[p.run_id] for p in fit.points if p.run_id in lives]
    if not mine:
        return Overhead(0.0, 0, 0)
    return Overhead(
        statistics.median(life.overhead for life in mine), len(mine), sum(life.startup_recorded for life in mine)
    )


@dataclass
class ShapeForecast:
    task: str
    shape: Shape
    fit_deploy: str | None = None
    fit: scaling.Fit | None = None
    ratio: SpeedRatio | None = None  # None: same kind of machine as the fitted runs
    prediction: scaling.Prediction | None = None
    line: tuple[float, float] | None = None  # predicted seconds = a + b * images
    hourly: float | None = None
    cost_note: str = ""
    refused: str | None = None
    notes: list[str] = field(default_factory=list)
    overhead: Overhead | None = None  # what a run's life adds to its job, from the fitted runs
    create_delete: float = 0.0  # creating and deleting the cluster (a Dataproc shape; an estimate)

    def cost(self, seconds: float, images: int) -> float | None:
        return pricing.cost_per_1000(self.hourly, seconds, images)

    def life(self, seconds: float) -> float:
        """The cluster's life for a job of ``seconds`` (module doc)."""
        return seconds + (self.overhead.seconds if self.overhead else 0.0) + self.create_delete

    def includes(self) -> str:
        """What the cluster-life figure adds to the job's seconds, and where each part comes from."""
        parts = [self.overhead.text() if self.overhead else "start-up: no fitted run"]
        if self.create_delete:
            parts.append(f"creation and deletion {self.create_delete:g} s (estimate, price table)")
        return " + ".join(parts)

    def as_dict(self, images: int) -> dict:
        if self.prediction is None:
            return {"refused": self.refused}
        p = self.prediction
        cores, machines = self.shape.model_inputs(self.task)
        return {
            "predicted_seconds": p.seconds,
            "predicted_seconds_low": p.low,
            "predicted_seconds_high": p.high,
            "predicted_images_per_second": images / p.seconds if p.seconds > 0 else None,
            pricing.JOB: self.cost(p.seconds, images),
            f"{pricing.JOB}_low": self.cost(p.low, images),
            f"{pricing.JOB}_high": self.cost(p.high, images),
            pricing.CLUSTER_LIFE: self.cost(self.life(p.seconds), images),
            f"{pricing.CLUSTER_LIFE}_low": self.cost(self.life(p.low), images),
            f"{pricing.CLUSTER_LIFE}_high": self.cost(self.life(p.high), images),
            pricing.LIFE_SECONDS: self.life(p.seconds),
            pricing.LIFE_INCLUDES: self.includes(),
            "hourly_cost": self.hourly,
            "cost_note": self.cost_note,
            "fitted_on": self.fit_deploy,
            "cores": cores,
            "machines": machines,
            "core_speed_ratio": asdict(self.ratio) if self.ratio else None,
            "notes": self.notes,
        }


def _refusal(task: str, machines: int, fits: dict[str, scaling.Fit], refusals: dict[str, str]) -> str:
    if not fits:
        why = "; ".join(f"{deploy}: {text}" for deploy, text in refusals.items()) or f"no usable {task} runs"
        return f"no {task} model: {why}"
    counts = "; ".join(
        f"{deploy} runs at {', '.join(map(str, f.machine_counts))} executor(s)" for deploy, f in fits.items()
    )
    return (
        f"{machines} executors are not covered ({counts}): add runs at 3 or more executor counts, e.g. "
        "python run.py -m +experiment=scaling_points cluster.deploy=standalone"
    )


def forecast_shape(
    task: str,
    shape: Shape,
    fits: dict[str, scaling.Fit],
    refusals: dict[str, str],
    ratio: SpeedRatio,
    options: Options,
    prices: pricing.Prices,
    lives: dict[str, pricing.Life],
) -> ShapeForecast:
    """One shape's prediction from the first fit that covers it (:data:`FIT_ORDER`), or why there is none."""
    cores, machines = shape.model_inputs(task)
    images = options.images
    hourly, cost_note = shape.hourly(prices, options.region)
    result = ShapeForecast(task, shape, hourly=hourly, cost_note=cost_note)
    result.create_delete = prices.dataproc_create_delete_seconds if shape.deploy == "dataproc" else 0.0
    deploy = next((d for d in FIT_ORDER[shape.deploy] if d in fits and fits[d].covers_machines(machines)), None)
    if deploy is None:
        result.refused = _refusal(task, machines, fits, refusals)
        return result
    fit = fits[deploy]
    result.fit_deploy, result.fit = deploy, fit
    result.overhead = overhead(fit, lives)
    result.ratio = ratio if shape.deploy == "dataproc" and deploy != "dataproc" else None
    factor = result.ratio.value if result.ratio else 1.0
    result.prediction = fit.predict(images, cores, machines, factor)
    result.line = fit.line(cores, machines, factor)
    largest = max(p.images for p in fit.points)
    if images > largest:
        result.notes.append(f"extrapolated: {images:,} images, {images / largest:.3g} x the largest fitted run")
    fitted_cores = max(p.cores for p in fit.points)
    if cores > fitted_cores:
        result.notes.append(f"extrapolated: {cores:g} cores, the fitted runs had at most {fitted_cores:g}")
    if machines > (most := max(fit.machine_counts)):
        result.notes.append(f"extrapolated: {machines} executors, the fitted runs had at most {most}")
    return result


def ranking_segments(lines: dict[str, tuple[float, float]]) -> list[dict]:
    """Where the order of ``a + b * images`` over the shapes changes: ``[{from_images, ranking}]``, smallest
    first (crossings below one image are not changes)."""
    names = sorted(lines)
    if not names:
        return []
    breaks = sorted(
        {
            (lines[j][0] - lines[i][0]) / (lines[i][1] - lines[j][1])
            for i in names
            for j in names
            if i < j and lines[i][1] != lines[j][1] and (lines[j][0] - lines[i][0]) / (lines[i][1] - lines[j][1]) >= 1
        }
    )
    edges = [0.0, *breaks]
    probes = [math.sqrt(lo * hi) if lo else hi / 2 for lo, hi in zip(edges, breaks, strict=False)] + [
        2 * edges[-1] or 1.0
    ]
    segments: list[dict] = []
    for start, probe in zip(edges, probes, strict=True):
        ranking = sorted(names, key=lambda s: (lines[s][0] + lines[s][1] * probe, s))
        if not segments or segments[-1]["ranking"] != ranking:
            segments.append({"from_images": start, "ranking": ranking})
    return segments


@dataclass
class TaskForecast:
    task: str
    images: int
    fits: dict[str, scaling.Fit]
    refusals: dict[str, str]
    shapes: list[ShapeForecast]
    ratio: SpeedRatio

    def predicted(self) -> list[ShapeForecast]:
        return [s for s in self.shapes if s.prediction is not None]

    def fastest(self) -> str | None:
        ranked = sorted((s.prediction.seconds, s.shape.name) for s in self.shapes if s.prediction)
        return ranked[0][1] if ranked else None

    def cheapest(self) -> str | None:
        """Over the cluster's life; at one size the cost per image orders as hourly price x life does."""
        ranked = sorted(
            (s.hourly * s.life(s.prediction.seconds), s.shape.name)
            for s in self.shapes
            if s.prediction and s.hourly is not None
        )
        return ranked[0][1] if ranked else None

    def time_segments(self) -> list[dict]:
        return ranking_segments({s.shape.name: s.line for s in self.shapes if s.line})

    def cost_segments(self) -> list[dict]:
        """Cost per image over the cluster's life is h * (L(0) + b N) / N, with L the life of a job of
        a + b N seconds: at one N it orders as the line (h L(a), h b) does."""
        return ranking_segments(
            {
                s.shape.name: (s.hourly * s.life(s.line[0]), s.hourly * s.line[1])
                for s in self.shapes
                if s.line and s.hourly is not None
            }
        )

    def as_dict(self) -> dict:
        return {
            "fits": {
                **{d: f.as_dict() for d, f in self.fits.items()},
                **{d: {"refused": r} for d, r in self.refusals.items()},
            },
            "shapes": {s.shape.name: s.as_dict(self.images) for s in self.shapes},
            "fastest": self.fastest(),
            "cheapest": self.cheapest(),
            "fastest_by_size": self.time_segments(),
            "cheapest_by_size": self.cost_segments(),
            "core_speed_ratio": asdict(self.ratio),
        }


def forecast_task(
    task: str,
    points: dict[str, list[scaling.Point]],
    shapes: Sequence[Shape],
    prices: pricing.Prices,
    options: Options,
    lives: dict[str, pricing.Life],
) -> TaskForecast:
    """Fit ``task`` per deploy kind, then predict every shape at ``options.images``."""
    fits, refusals = {}, {}
    for deploy, mine in sorted(points.items()):
        try:
            fits[deploy] = scaling.fit(mine, TASK_TERMS[task], options.confidence, options.bootstrap)
        except scaling.DegenerateDesign as error:
            refusals[deploy] = str(error)
    local_fit = next((fits[d] for d in ("standalone", "local") if d in fits), None)
    ratio = (
        calibrate_ratio(local_fit, points.get("dataproc", []), options.core_speed_ratio)
        if local_fit
        else SpeedRatio(options.core_speed_ratio, "assumed: --core-speed-ratio")
    )
    rows = [forecast_shape(task, shape, fits, refusals, ratio, options, prices, lives) for shape in shapes]
    return TaskForecast(task, options.images, fits, refusals, rows, ratio)


@dataclass
class Forecast:
    selection: query.RunSelection
    options: Options
    tasks: dict[str, TaskForecast]
    excluded: list
    prices: pricing.Prices

    def usable(self) -> bool:
        return any(t.predicted() for t in self.tasks.values())

    def as_dict(self) -> dict:
        return {
            "label": LABEL,
            "selection": self.selection.as_dict(),
            "images": self.options.images,
            "shapes": list(self.options.shapes),
            "region": self.options.region,
            "speedtest_source": self.options.source,
            "local_cores": self.options.local_cores,
            "prices": {"source": self.prices.source, "date": self.prices.date, "currency": self.prices.currency},
            "covers": {pricing.JOB: pricing.JOB_COVERS, pricing.CLUSTER_LIFE: pricing.LIFE_COVERS},
            "dataproc_create_delete_seconds": self.prices.dataproc_create_delete_seconds,
            "tasks": {name: t.as_dict() for name, t in self.tasks.items()},
            "excluded": [e.as_dict() for e in self.excluded],
        }


def build(selection: query.RunSelection, runs: pd.DataFrame, options: Options = Options()) -> Forecast:
    """The forecast of every task for ``options.shapes`` at ``options.images`` (ValueError: unknown shape)."""
    shapes = [load_shape(name, options.local_cores) for name in options.shapes]
    prices = pricing.load_prices(options.prices_path)
    runs = runs[runs["task"].isin(TASKS)] if "task" in runs else runs.iloc[0:0]
    pre, ex_pre = preprocess_points(runs, options)
    speed, ex_speed = speedtest_points(selection, runs, options)
    lives = {  # run id -> its life (without creation and deletion), if it recorded its job's seconds
        str(row["run_id"]): pricing.life(row, job, 0.0)
        for _, row in runs.iterrows()
        if (job := query.metric(row, names.SECONDS)) is not None and math.isfinite(job)
    }
    tasks = {
        "preprocess": forecast_task("preprocess", pre, shapes, prices, options, lives),
        "speedtest": forecast_task("speedtest", speed, shapes, prices, options, lives),
    }
    return Forecast(selection, options, tasks, ex_pre + ex_speed, prices)


# --- the design of scaling runs ---------------------------------------------------------------

PLAN_SIZES = (250, 500, 1000, 2000)
PLAN_EXECUTORS = (1, 2, 3)
PLAN_RUNS = 8
PLAN_BATCH_SIZE = 32  # the speed test's batch size in experiments/scaling_points.yaml
PLAN_WARMUP = 2


def design_plan(
    sizes: Sequence[int] = PLAN_SIZES, executors: Sequence[int] = PLAN_EXECUTORS, runs: int = PLAN_RUNS
) -> dict[str, dict[str, int]]:
    """``runs`` D-optimal points of sizes x executors (1 core each): experiments/scaling_points.yaml's ``points``."""
    grid = [(size, count) for size in sizes for count in executors]
    x = scaling.design_matrix([g[0] for g in grid], [g[1] for g in grid], [g[1] for g in grid], scaling.ERNEST_TERMS)
    chosen = [grid[i] for i in scaling.d_optimal(x, runs)]
    return {
        f"n{size}-e{count}": {
            "num_images": size,
            "executors": count,
            "batches": max(1, size // PLAN_BATCH_SIZE - PLAN_WARMUP),
        }
        for size, count in chosen
    }
