"""Like with like: which runs a ranking may compare, and which group its winner comes from, defined
once for every ranking (docs/analysis.md, "Comparing like with like")."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from bigimage.analysis_lib.common import Ranked
from bigimage.tracking import names, query

ABSENT = "-"
SHAPE_KEYS = ("cluster.name", "cores", "executors")
SHAPE_METRICS = {"cores": names.SPARK_TOTAL_CORES, "executors": names.SPARK_EXECUTORS}
Context = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Setting:
    """One setting of a context: its name and how a :func:`query.load_runs` row gives its value."""

    name: str
    read: Callable[[pd.Series], str | None]
    absent: str = ABSENT  # the value of a run that did not log it
    size: bool = False  # the data size: groups with more of it are preferred (:func:`choose`)

    def value(self, row: pd.Series) -> str:
        found = self.read(row)
        return self.absent if found is None else found


def number_text(value: float) -> str:
    """A metric as a context value: ``2000``, ``0.5``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def param(key: str, absent: str = ABSENT, size: bool = False) -> Setting:
    return Setting(key, lambda row: query.param(row, key), absent, size)  # a str, as MLflow keeps params


def tag(key: str) -> Setting:
    return Setting(key, lambda row: query.tag(row, key))


def metric(key: str, name: str, size: bool = False) -> Setting:
    def read(row: pd.Series) -> str | None:
        value = query.metric(row, key)
        return None if value is None or not math.isfinite(value) else number_text(value)

    return Setting(name, read, size=size)


def records(keys: Sequence[str]) -> Setting:
    """``images``: the sum of the params ``keys`` a run logged (absent when it logged none of them)."""

    def read(row: pd.Series) -> str | None:
        counts = [query.param(row, key) for key in keys]
        present = [float(count) for count in counts if count is not None]
        return number_text(sum(present)) if present else None

    return Setting("images", read, size=True)


DEPLOY = tag(names.SPARK_DEPLOY)
TRAINING = (
    param("dataset.name"),
    records((names.TRAIN_RECORDS, names.VAL_RECORDS, names.TEST_RECORDS)),
    param("image_size"),
    param("train.validation_fraction"),
    param("train.test_fraction", absent="0"),  # a run from before the test split held none out
    param("train.split"),
    param("train.split_seed"),
    param("train.augment"),
)
PREPROCESS = (
    DEPLOY,
    param("dataset.name"),
    metric(names.IMAGES, "images", size=True),
    param("image_size"),
    param("num_shards"),
    param("preprocess.jpeg_quality"),
)
SPEEDTEST = (
    DEPLOY,
    param("dataset.name"),
    param("dataset.num_images", size=True),
    param("image_size"),
    param("speedtest.batch_sizes"),
    param("speedtest.batch_numbers"),
    param("speedtest.warmup_batches"),
    param(names.PIPELINE_THREADS),
    tag(names.EFFECTIVE_PARALLELISM),
)


def plain(value: object) -> object:
    """A table cell as a key's value: None for a missing one, a Python int for a whole number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(float(value))
    return value


def shape(row: pd.Series) -> dict[str, str | int | None]:
    """The shape a run ran on (:data:`SHAPE_KEYS`): its cluster name and what Spark granted it."""
    granted = {name: query.metric(row, key) for name, key in SHAPE_METRICS.items()}
    return {
        "cluster.name": query.param(row, "cluster.name"),
        **{name: None if value is None else int(value) for name, value in granted.items()},
    }


def shape_text(key: dict) -> str:
    """``four (8 cores, 4 executors)``; the name alone when Spark's grant was not read back."""
    granted = [
        f"{key[name]} {name if key[name] != 1 else name[:-1]}"
        for name in ("cores", "executors")
        if key.get(name) is not None
    ]
    return f"{key['cluster.name']} ({', '.join(granted)})" if granted else str(key["cluster.name"])


def item_text(key: dict) -> str:
    """A ranked item in a sentence: a shape (and the source it read), or a training configuration's values."""
    if "cluster.name" in key and set(key) <= {"source", *SHAPE_KEYS}:
        text = shape_text(key)
        return f"{text}, reading {key['source']}" if "source" in key else text
    return ", ".join(str(value) for value in key.values())


@dataclass
class Group:
    """One comparable group: the context its runs share and the rankings made within it."""

    context: dict[str, str]
    run_ids: list[str]
    size: float  # the data size setting's value (0 when absent)
    newest: float  # the start time of its newest run (ms since the epoch; 0 when unknown)
    label: str = ""  # the settings that tell it from the other groups (:func:`groups`)
    chosen: bool = False
    rankings: dict[str, list[Ranked]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "group": self.label,
            "context": self.context,
            "chosen": self.chosen,
            "run_ids": self.run_ids,
            **{name: [r.as_dict() for r in ranking] for name, ranking in self.rankings.items()},
        }


def groups(rows: Iterable[pd.Series], settings: Sequence[Setting]) -> list[Group]:
    """``rows`` in comparable groups (equal values of every setting), in the order their first run came,
    each labelled by the settings that differ between the groups (``images=250``), or ``all runs``."""
    members: dict[Context, list[pd.Series]] = {}
    for row in rows:
        members.setdefault(tuple((setting.name, setting.value(row)) for setting in settings), []).append(row)
    out = []
    for key, mine in members.items():
        values = dict(key)
        sizes = [values[s.name] for s in settings if s.size and values[s.name] != s.absent]
        starts = [float(r["start_time"]) for r in mine if pd.notna(r.get("start_time"))]
        run_ids = sorted({str(r["run_id"]) for r in mine})
        out.append(Group(values, run_ids, _as_float(sizes[0]) if sizes else 0.0, max(starts, default=0.0)))
    keys = differing(out)
    for group in out:
        group.label = ", ".join(f"{key}={group.context[key]}" for key in keys) or "all runs"
    return out


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def differing(groups: Sequence[Group]) -> list[str]:
    """The context settings whose values differ between ``groups``."""
    names = groups[0].context if groups else {}
    return [name for name in names if len({g.context.get(name) for g in groups}) > 1]


def choose(groups: Sequence[Group], ranking: str, what: str) -> str:
    """Mark the group the winner of ``ranking`` comes from; say which and why (empty when no group ranks any)."""
    for group in groups:
        group.chosen = False
    candidates = [g for g in groups if g.rankings.get(ranking)]
    if not candidates:
        return ""
    best = max(candidates, key=lambda g: (len(g.rankings[ranking]), g.size, len(g.run_ids), g.newest))
    best.chosen = True
    keys = differing(groups)
    if len(groups) == 1:
        return f"every ranked run agrees on {', '.join(best.context)}: one comparable group"
    return (
        f"the runs form {len(groups)} comparable groups, which differ in {', '.join(keys)} and are ranked apart; "
        f"the winner comes from the group {best.label}: it compares the most {what} "
        f"({len(best.rankings[ranking])}), then has the most data, the most runs, the newest run"
    )
