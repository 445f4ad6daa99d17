"""What a cluster shape costs per hour on Dataproc: the typed shape (``cluster.shape``) at the list prices of
``analysis/prices.yaml`` (machines + Dataproc's per-vCPU fee + boot disks).

One rule for both sides: a measured run is priced by the shape it logged (:func:`run_hourly`, its
``cluster.shape.*`` params read back into :class:`~bigimage.config.DataprocShape`), and a forecast prices
the shape of a ``conf/cluster`` option as Hydra composes it (:func:`hourly`). Only runs whose Spark
really ran on Dataproc (tag ``spark.deploy``, read back from Spark) are priced: the same ``cluster=``
name run locally or on a standalone cluster used other machines. Prices are data, never code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf

from bigimage.config import PROJECT_ROOT, DataprocShape
from bigimage.tracking import names, query

DEFAULT_PRICES = PROJECT_ROOT / "analysis" / "prices.yaml"
PRICED_DEPLOY = "dataproc"  # the only place the price table's machines are what a run really ran on
REGION_PARAM = "cluster.dataproc.region"
SHAPE_PARAMS = "cluster.shape."  # how flatten_config logs the typed shape
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
    # the cluster-life costs add (:mod:`.billing`); 0 when the table gives none
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
    """The hourly cost of ``shape`` on Dataproc in ``region``, and how it was built; ``(None, why)`` for a
    region missing from the table or a machine or disk type with no price."""
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
    """The shape a run logged (its ``cluster.shape.*`` params, typed by the schema); None when it logged none.
    Raises ValueError for a value the schema does not accept."""
    logged = {
        item.name: value
        for item in fields(DataprocShape)
        if (value := query.param(row, SHAPE_PARAMS + item.name)) is not None and item.name != "optional_components"
    }
    if "master_machine_type" not in logged:
        return None
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataprocShape), logged))  # type: ignore[return-value]


def run_hourly(row: pd.Series, prices: Prices) -> tuple[float | None, str]:
    """The hourly cost of a run (a :func:`query.load_runs` row) on the shape it logged, in its region;
    ``(None, why)`` for a run that did not run on Dataproc, logged no region or shape, or is not priced."""
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
