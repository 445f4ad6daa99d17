"""What a run or a cluster shape costs on Dataproc, and what each cost covers (docs/forecast.md, "Costs");
:func:`hourly` prices both measured runs and forecast shapes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from statistics import fmean

import pandas as pd
import yaml
from omegaconf import OmegaConf

from bigimage.config import PROJECT_ROOT, DataprocShape
from bigimage.tracking import names, query

DEFAULT_PRICES = PROJECT_ROOT / "analysis" / "prices.yaml"
PRICED_DEPLOY = "dataproc"  # the only place the price table's machines are what a run really ran on
REGION_PARAM = "cluster.dataproc.region"
SHAPE_PARAMS = "cluster.shape."  # how flatten_config logs the typed shape
JOB = "cost_per_1000_images_job"
CLUSTER_LIFE = "cost_per_1000_images_cluster_life"
LIFE_SECONDS = "cluster_life_seconds"
LIFE_INCLUDES = "cluster_life_includes"
JOB_COVERS = (
    "the job alone: its own seconds, without Spark's start-up, the first Python worker, the run's work "
    "around the job, or creating and deleting the cluster"
)
LIFE_COVERS = (
    "the cluster's life for the run, what the bill charges: the run's wall time (Spark's start-up, the first "
    "Python worker, the job, the logging) plus, on Dataproc, creating and deleting the cluster"
)
PRICED_RUNS = (
    f"only runs with tag {names.SPARK_DEPLOY}={PRICED_DEPLOY}, by their own cluster.shape in their {REGION_PARAM}; "
    "other runs have no cost"
)


@dataclass(frozen=True)
class RegionPrices:
    machines: dict  # machine type -> {"vcpus": int, "hourly": float}
    disks: dict  # disk type -> price per GB-month
    date: str


@dataclass(frozen=True)
class Prices:
    regions: dict  # region -> RegionPrices
    dataproc_per_vcpu_hour: float
    hours_per_month: float
    source: str
    date: str
    currency: str
    # seconds to create and delete a Dataproc cluster, which Dataproc bills and no run records: an estimate
    # the cluster-life costs add; 0 when the table gives none
    dataproc_create_delete_seconds: float = 0.0

    @property
    def region(self) -> str:
        """The regions the table prices (for headers)."""
        return ", ".join(self.regions)


def load_prices(path: str | Path | None = None) -> Prices:
    path = Path(path or DEFAULT_PRICES)
    data = yaml.safe_load(path.read_text())
    try:
        regions = {
            str(name): RegionPrices(
                {k: {"vcpus": int(v["vcpus"]), "hourly": float(v["hourly"])} for k, v in region["machines"].items()},
                {k: float(v) for k, v in region["disks"].items()},
                str(region.get("date", data.get("date", ""))),
            )
            for name, region in data["regions"].items()
        }
        return Prices(
            regions,
            float(data["dataproc_per_vcpu_hour"]),
            float(data.get("hours_per_month", 730)),
            str(data.get("source", "")),
            str(data.get("date", "")),
            str(data.get("currency", "USD")),
            float(data.get("dataproc_create_delete_seconds", 0.0)),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"price table {path} is malformed (expected regions: <region>: machines, disks): {exc}"
        ) from None


def hourly(shape: DataprocShape, region: str, prices: Prices) -> tuple[float | None, str]:
    """The hourly cost of ``shape`` on Dataproc in ``region``, and how it was built; else ``(None, why)``."""
    table = prices.regions.get(region)
    if table is None:
        return None, (
            f"no prices for region {region} in the price table (it has {prices.region}); add them from {prices.source}"
        )
    workers = 0 if shape.single_node else shape.worker_count
    machines = [(1, shape.master_machine_type, shape.master_boot_disk_type, shape.master_boot_disk_size_gb)]
    if workers:
        machines.append(
            (workers, shape.worker_machine_type, shape.worker_boot_disk_type, shape.worker_boot_disk_size_gb)
        )
    missing = {machine for _, machine, _, _ in machines if machine not in table.machines}
    missing |= {disk for _, _, disk, _ in machines if disk not in table.disks}
    if missing:
        return None, f"no price for {', '.join(sorted(missing))} in {region}"
    vcpus = sum(count * table.machines[machine]["vcpus"] for count, machine, _, _ in machines)
    compute = sum(count * table.machines[machine]["hourly"] for count, machine, _, _ in machines)
    fee = vcpus * prices.dataproc_per_vcpu_hour
    disks = sum(count * size * table.disks[disk] for count, _, disk, size in machines) / prices.hours_per_month
    how = (
        f"Dataproc in {region} (prices of {table.date}): {shape.master_machine_type}"
        + (f" + {workers} x {shape.worker_machine_type}" if workers else "")
        + f": machines {compute:.4f} + Dataproc fee {vcpus} vCPU x {prices.dataproc_per_vcpu_hour} = {fee:.4f}"
        f" + disks {disks:.4f} per hour"
    )
    return compute + fee + disks, how


def run_shape(row: pd.Series) -> DataprocShape | None:
    """The shape a run logged (its ``cluster.shape.*`` params), None if none; ValueError if the schema refuses it."""
    logged = {
        item.name: value
        for item in fields(DataprocShape)
        if (value := query.param(row, SHAPE_PARAMS + item.name)) is not None and item.name != "optional_components"
    }
    if "master_machine_type" not in logged:
        return None
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataprocShape), logged))  # type: ignore[return-value]


def run_hourly(row: pd.Series, prices: Prices) -> tuple[float | None, str]:
    """The hourly cost of a run on the shape it logged, in its region; else ``(None, why)``."""
    deploy = query.tag(row, names.SPARK_DEPLOY)
    if deploy is None:
        return None, f"not priced: no {names.SPARK_DEPLOY} tag, so where it ran was not read back from Spark"
    if deploy != PRICED_DEPLOY:
        master = query.tag(row, names.SPARK_MASTER)
        where = f"{deploy} ({names.SPARK_MASTER} {master})" if master else deploy
        return None, f"not priced: ran on {where}, not on the Dataproc machines the price table prices"
    region = query.param(row, REGION_PARAM)
    if region is None:
        return None, f"not priced: a Dataproc run without the {REGION_PARAM} param"
    try:
        shape = run_shape(row)
    except ValueError as exc:
        return None, f"unreadable cluster shape: {exc}"
    return hourly(shape, str(region), prices) if shape else (None, "no cluster.shape params")


def cost_per_1000(hourly: float | None, seconds: float, images: float) -> float | None:
    """The cost of ``images`` images in ``seconds`` at ``hourly``, per 1,000 images."""
    if hourly is None or images <= 0:
        return None
    return hourly * seconds / 3600.0 / images * 1000.0


def covers(create_delete_seconds: float) -> str:
    """One line saying what each cost covers, with the creation-and-deletion estimate's value."""
    estimate = (
        f"an estimate of {create_delete_seconds:g} s from the price table, as no run records those operations"
        if create_delete_seconds
        else "not counted, as the price table gives no estimate and no run records those operations"
    )
    return (
        f"What a cost covers: {JOB} is {JOB_COVERS}; {CLUSTER_LIFE} is {LIFE_COVERS}; creating and deleting a "
        f"Dataproc cluster is {estimate}."
    )


@dataclass(frozen=True)
class Life:
    """The seconds a cluster lived for one run, by part."""

    job: float
    startup: float  # recorded Spark start-up (0 when the run recorded none)
    other: float  # the rest of the run's wall time: the first Python worker, the driver's work, logging
    create_delete: float  # creating and deleting the cluster (Dataproc; an estimate)
    startup_recorded: bool

    @property
    def seconds(self) -> float:
        return self.job + self.startup + self.other + self.create_delete

    @property
    def overhead(self) -> float:
        """What the run's life adds to its job on a running cluster: start-up and the rest of the run."""
        return self.startup + self.other


def wall_seconds(row: pd.Series) -> float | None:
    """The run's wall time (MLflow start to end), or None when it has no end."""
    start, end = row.get("start_time"), row.get("end_time")
    if start is None or end is None or pd.isna(start) or pd.isna(end) or end < start:
        return None
    return (float(end) - float(start)) / 1000.0


def life(row: pd.Series, job_seconds: float, create_delete_seconds: float) -> Life:
    """The cluster's life for the run ``row`` of a job of ``job_seconds`` (module doc)."""
    recorded = query.metric(row, names.STARTUP_SECONDS)
    startup = max(recorded or 0.0, 0.0)
    wall = wall_seconds(row)
    other = max((wall or 0.0) - job_seconds - startup, 0.0)
    dataproc = query.tag(row, names.SPARK_DEPLOY) == PRICED_DEPLOY
    return Life(job_seconds, startup, other, create_delete_seconds if dataproc else 0.0, recorded is not None)


def includes(lives: list[Life]) -> str:
    """What the cluster-life figure of ``lives`` (one item's runs) adds to the job, means over the runs."""
    if not lives:
        return ""
    startup = fmean(item.startup for item in lives)
    parts = [
        f"start-up {startup:.3g} s" if any(item.startup_recorded for item in lives) else "start-up not recorded",
        f"rest of the run {fmean(item.other for item in lives):.3g} s",
    ]
    create_delete = fmean(item.create_delete for item in lives)
    if create_delete:
        parts.append(f"creation and deletion {create_delete:.3g} s (estimate)")
    return " + ".join(parts)
