"""Rank training configurations by accuracy and cluster shapes by speed and cost, with intervals, within
comparable groups (:mod:`.comparable`); tag the winners ``best_config`` and register the champion
(docs/analysis.md, "The best configuration and the report").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import pandas as pd

from bigimage.analysis_lib import common, comparable, overfitting, pricing, registry, training_cost
from bigimage.analysis_lib.common import Ranked
from bigimage.tracking import judged, names, query

SCRIPT_HELP = (
    "Rank training configurations, and cluster shapes for preprocessing and the speed test, "
    "with confidence intervals over repeated runs; tag the winners best_config=true and register the winning "
    f"training run's model with the alias {registry.ALIAS} (models:/<name>@{registry.ALIAS})."
)
TAG_BEST = "best_config"
CONFIG_PARAMS = training_cost.BASE_PARAMS
PREPROCESS_METRICS = (names.IMAGES_PER_SECOND, names.SECONDS, names.IMAGES)
PREFERRED_SPEEDTEST_SOURCE = "tfrecord"  # the format the training reads: its speed decides the winner


# --- results ----------------------------------------------------------------------------------


def _distinguishable(ranking: list[Ranked], what: str, fmt: str = "{:.4g}") -> dict:
    if not ranking:
        return {"distinguishable": None, "statement": f"no {what} to rank"}
    top = ranking[0]
    if len(ranking) == 1:
        statement = f"only one {what}: {top.score.text(fmt)}; nothing to compare with"
        return {"distinguishable": None, "statement": statement}
    runner_up = ranking[1]
    overlap = top.score.overlaps(runner_up.score)
    if overlap is None:
        if top.score.n == 1:
            who = "they have" if runner_up.score.n == 1 else "it has"
        else:
            who = "the next has"
        statement = f"cannot tell whether the top {what} beats the next: {who} a single run (n=1 gives no interval)"
        return {"distinguishable": None, "statement": statement + "; repeat the runs to get an interval"}
    statement = (
        f"the top {what} ({top.score.text(fmt)}) is {'NOT ' if overlap else ''}distinguishable from the next "
        f"({runner_up.score.text(fmt)}): their intervals {'overlap' if overlap else 'do not overlap'}"
    )
    return {"distinguishable": not overlap, "statement": statement}


def _exclude(excluded: list, row: pd.Series, reason: str) -> None:
    excluded.append(overfitting.Exclusion.of(row, reason))


def _finished(runs: pd.DataFrame, task: str, excluded: list) -> list[pd.Series]:
    """The FINISHED runs of ``task`` that name their ``cluster.name``; the others go to ``excluded``, with why."""
    ok = []
    for _, row in runs[runs["task"] == task].iterrows():
        if row["status"] != "FINISHED":
            _exclude(excluded, row, f"status {row['status']}: only FINISHED runs are ranked")
        elif query.param(row, "cluster.name") is None:
            _exclude(excluded, row, "params of another schema: missing cluster.name")
        else:
            ok.append(row)
    return ok


TRAINING_RANKING = judged.MONITOR  # the name of a training group's ranking (comparable.Group.rankings)


def rank_training(
    of: overfitting.OverfittingResult, confidence: float = 0.95
) -> tuple[list[comparable.Group], list[overfitting.Exclusion]]:
    """Training configurations (:func:`training_cost.config_params`) ranked by validation accuracy at the
    judged epoch (mean over runs), within each comparable group (:data:`comparable.TRAINING`)."""
    excluded: list[overfitting.Exclusion] = list(of.excluded)
    by_id = of.runs.set_index("run_id", drop=False)
    keys = training_cost.config_params(by_id.loc[[v.run_id for v in of.verdicts]]) if of.verdicts else []
    split = comparable.Split(comparable.TRAINING)
    scores: dict[str, tuple[tuple, float]] = {}  # run id -> its configuration, val accuracy at the judged epoch
    for verdict in of.verdicts:
        row = by_id.loc[verdict.run_id]
        key = _configuration(row, keys, excluded)
        if key is None:
            continue
        if verdict.judged_val_accuracy is None:
            _exclude(excluded, row, "no val_accuracy history: no judged epoch")
            continue
        split.add(row)
        scores[verdict.run_id] = (key, verdict.judged_val_accuracy)
    groups = [split.group(context, {}) for context in split.members]
    for group in groups:
        group.rankings[TRAINING_RANKING] = _rank_configurations(group.run_ids, scores, keys, confidence)
    comparable.label_groups(groups)
    return groups, excluded


def _configuration(row: pd.Series, keys: list[str], excluded: list) -> tuple | None:
    """The run's configuration (its values of ``keys``), or None with why in ``excluded``."""
    values = {key: query.param(row, key) for key in keys}
    missing = [key for key in CONFIG_PARAMS if values[key] is None]
    if missing:
        _exclude(excluded, row, f"params of another schema: missing {', '.join(missing)}")
        return None
    try:
        values["batch_size"] = int(float(values["batch_size"]))
    except ValueError:
        _exclude(excluded, row, f"params of another schema: batch_size={values['batch_size']!r} is not a number")
        return None
    return tuple(values[name] if name == "batch_size" else str(values[name]) for name in keys)


def _rank_configurations(
    run_ids: list[str], scores: dict[str, tuple[tuple, float]], keys: list[str], confidence: float
) -> list[Ranked]:
    """The configurations of ``run_ids`` by their mean score, best first (more runs first on ties)."""
    members: dict[tuple, dict[str, float]] = {}
    for run_id in run_ids:
        key, score = scores[run_id]
        members.setdefault(key, {})[run_id] = score
    ranking = [
        Ranked(dict(zip(keys, key)), common.mean_interval(list(runs.values()), confidence), list(runs))
        for key, runs in members.items()
    ]
    ranking.sort(key=lambda ranked: (-ranked.score.mean, -ranked.score.n, str(ranked.key)))
    return ranking


def rank_preprocess(
    runs: pd.DataFrame, prices: pricing.Prices, confidence: float = 0.95
) -> tuple[list[comparable.Group], list[overfitting.Exclusion], pd.DataFrame]:
    """Cluster shapes of the preprocess runs, by images/s (desc) and by cost per 1,000 images (asc),
    within each comparable group of runs (:data:`comparable.PREPROCESS`); and the table of runs."""
    excluded: list[overfitting.Exclusion] = []
    rows, usable = [], []
    for row in _finished(runs, "preprocess", excluded):
        values, why = common.positive_metrics(row, PREPROCESS_METRICS)
        if why:
            _exclude(excluded, row, why)
            continue
        hourly, how = pricing.run_hourly(row, prices)
        usable.append(row)
        rows.append(
            {
                "run_id": row["run_id"],
                **comparable.shape(row),
                **values,
                "hourly_cost": hourly,
                "cost_note": how,
                pricing.JOB: pricing.cost_per_1000(hourly, values["seconds"], values["images"]),
                **_life_costs(row, hourly, values["seconds"], values["images"], prices),
            }
        )
    table = pd.DataFrame(rows)
    return _shape_groups(table, usable, comparable.PREPROCESS, list(comparable.SHAPE_KEYS), confidence), excluded, table


def _life_costs(
    row: pd.Series, hourly: float | None, job_seconds: float, images: float, prices: pricing.Prices
) -> dict:
    """The run's cluster life (:func:`pricing.life`: the seconds, the parts as ``life``) and its cost per
    1,000 of ``images``."""
    life = pricing.life(row, job_seconds, prices.dataproc_create_delete_seconds)
    return {
        pricing.LIFE_SECONDS: life.seconds,
        "life": life,
        pricing.CLUSTER_LIFE: pricing.cost_per_1000(hourly, life.seconds, images),
    }


def _shape_groups(
    table: pd.DataFrame,
    runs: list[pd.Series],
    settings: tuple[comparable.Setting, ...],
    keys: list[str],
    confidence: float,
) -> list[comparable.Group]:
    """``table`` (one row per run, or per run and source) ranked by ``keys`` within each comparable group
    of ``runs`` by ``settings``."""
    split = comparable.split(runs, settings)
    groups = []
    for context in split.members:
        group = split.group(context, {})
        group.rankings = _rank_shapes(table[table["run_id"].isin(group.run_ids)], keys, confidence)
        groups.append(group)
    comparable.label_groups(groups)
    return groups


def _rank_shapes(table: pd.DataFrame, keys: list[str], confidence: float) -> dict[str, list[Ranked]]:
    """Items of ``keys`` by images/s (desc) and, for the priced runs, by cost (asc): one value per row of
    ``table`` (a run's, or a run's mean over its repetitions: repetitions in one process are not
    independent, so the intervals have n = runs)."""
    speed, cost = [], []
    for key_values, group in _by_key(table, keys):
        run_ids = sorted(set(group["run_id"]))
        priced = group[group[pricing.JOB].notna()]  # Dataproc runs only (hourly_cost says why)
        extra = {
            "hourly_cost": priced["hourly_cost"].iloc[0] if not priced.empty else None,
            "cost_note": (priced if not priced.empty else group)["cost_note"].iloc[0],
            "seconds": common.mean_interval(group["seconds"].tolist(), confidence).as_dict(),
            **_life_extra(priced),
        }
        speed.append(
            Ranked(
                key_values, common.mean_interval(group[names.IMAGES_PER_SECOND].tolist(), confidence), run_ids, extra
            )
        )
        if not priced.empty:
            costs = priced[pricing.JOB].tolist()
            scored = {**extra, "scored_by": pricing.JOB}
            cost.append(
                Ranked(key_values, common.mean_interval(costs, confidence), sorted(set(priced["run_id"])), scored)
            )
    speed.sort(key=lambda r: (-r.score.mean, str(r.key)))
    cost.sort(key=lambda r: (r.score.mean, str(r.key)))
    return {"by_speed": speed, "by_cost": cost}


def _life_extra(priced: pd.DataFrame) -> dict:
    """The cluster-life figures of an item's priced runs (means over the runs; one value per run):
    :data:`pricing.CLUSTER_LIFE`, its seconds and what they add to the job."""
    if priced.empty:
        return {pricing.CLUSTER_LIFE: None, pricing.LIFE_SECONDS: None, pricing.LIFE_INCLUDES: ""}
    runs = priced.drop_duplicates("run_id")
    return {
        pricing.CLUSTER_LIFE: float(runs[pricing.CLUSTER_LIFE].mean()),
        pricing.LIFE_SECONDS: float(runs[pricing.LIFE_SECONDS].mean()),
        pricing.LIFE_INCLUDES: pricing.includes(list(runs["life"])),
    }


def _by_key(table: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """The rows of ``table`` per value of ``keys``, sorted; a missing value (a shape's cores that Spark
    did not report) is None and a value of its own, never dropped."""
    if table.empty:
        return []
    values = [tuple(comparable.plain(row[key]) for key in keys) for _, row in table.iterrows()]
    order = sorted(set(values), key=lambda value: tuple((v is None, str(v)) for v in value))
    return [(dict(zip(keys, value)), table[[v == value for v in values]]) for value in order]


def speedtest_rows(selection: query.RunSelection, runs: pd.DataFrame):
    """The speed-test grid rows of all usable speedtest runs, with their shape (:data:`comparable.SHAPE_KEYS`)
    and run ids."""
    excluded: list[overfitting.Exclusion] = []
    by_id = {row["run_id"]: row for row in _finished(runs, "speedtest", excluded)}
    table, problems = query.load_run_table(selection.tracking_uri, names.SPEEDTEST_TABLE, list(by_id))
    for run_id, why in problems.items():
        _exclude(excluded, by_id[run_id], why)
    frames, notes = [], []
    for run_id, group in table.groupby("run_id", sort=False):
        missing = [c for c in names.SPEEDTEST_COLUMNS if c not in group.columns]
        if missing:
            why = f"{names.SPEEDTEST_TABLE} of another schema: missing columns {', '.join(missing)}"
            _exclude(excluded, by_id[run_id], why)
            continue
        group = group.copy()
        for column in names.SPEEDTEST_COLUMNS[1:]:  # all but "source" are numbers
            group[column] = pd.to_numeric(group[column], errors="coerce")
        usable = group[(group["seconds"] > 0) & (group["images"] > 0)]
        if usable.empty:
            _exclude(excluded, by_id[run_id], f"{names.SPEEDTEST_TABLE} has no row with positive images and seconds")
            continue
        shape = comparable.shape(by_id[run_id])
        frames.append(usable.assign(**{key: [shape[key]] * len(usable) for key in comparable.SHAPE_KEYS}))
        if len(usable) < len(group):
            notes.append(f"{run_id}: {len(group) - len(usable)} grid row(s) without positive images/seconds dropped")
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rows, excluded, notes, by_id


def rank_speedtest(selection: query.RunSelection, runs: pd.DataFrame, prices: pricing.Prices, confidence: float = 0.95):
    """(Source, shape) pairs by images/s and cost within each comparable group of speed-test runs
    (:data:`comparable.SPEEDTEST`); each run counts once: the mean of its repetitions."""
    rows, excluded, notes, by_id = speedtest_rows(selection, runs)
    if rows.empty:
        return [], excluded, notes, rows
    per_rep = _images_per_second(rows, ["run_id", "source", "repetition"])
    hourly = {run_id: pricing.run_hourly(by_id[run_id], prices) for run_id in per_rep["run_id"].unique()}
    rate = per_rep["run_id"].map({run_id: price for run_id, (price, _) in hourly.items()}).astype(float)
    per_rep[pricing.JOB] = rate * per_rep["seconds"] / per_rep["images"] / 3.6  # pricing.cost_per_1000, per row
    per_run = _run_means(per_rep, ["run_id", "source"], [names.IMAGES_PER_SECOND, "seconds", "images", pricing.JOB])
    info = [
        {"run_id": run_id, "hourly_cost": price, "cost_note": how, **comparable.shape(by_id[run_id])}
        | _speedtest_life(by_id[run_id], rows[rows["run_id"] == run_id], price, prices)
        for run_id, (price, how) in hourly.items()
    ]
    per_run = per_run.merge(pd.DataFrame(info), on="run_id")
    keys = ["source", *comparable.SHAPE_KEYS]
    usable = [by_id[run_id] for run_id in per_run["run_id"].unique()]
    return _shape_groups(per_run, usable, comparable.SPEEDTEST, keys, confidence), excluded, notes, rows


def _speedtest_life(row: pd.Series, rows: pd.DataFrame, hourly: float | None, prices: pricing.Prices) -> dict:
    """A speed-test run's cluster life (:func:`_life_costs`) per 1,000 of every image it read, both
    sources and all repetitions: the life is the run's, whichever source was read in it. Its job is
    the grid's seconds (metric ``seconds``), else the timed reads' sum."""
    job = query.metric(row, names.SECONDS) or float(rows["seconds"].sum())
    return _life_costs(row, hourly, job, float(rows["images"].sum()), prices)


def _run_means(table: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """The mean of ``columns`` per ``keys`` (one row per run: its repetitions' mean); a column that is
    missing in every row of a group stays missing."""
    return table.groupby(keys, as_index=False, sort=False)[columns].mean()


def speedtest_by_batch(rows: pd.DataFrame) -> pd.DataFrame:
    """Images/s per (run, shape, source, batch_size): each run's mean over its repetitions, the data of the
    throughput figure (its intervals are then over runs)."""
    if rows.empty:
        return rows
    keys = ["run_id", "source", "batch_size", "repetition"]
    per_rep = _images_per_second(rows, keys)
    per_run = _run_means(per_rep, keys[:-1], [names.IMAGES_PER_SECOND])
    shapes = rows.drop_duplicates("run_id").set_index("run_id")
    for key in comparable.SHAPE_KEYS:
        per_run[key] = per_run["run_id"].map(shapes[key])
    return per_run


def _images_per_second(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The grid rows' images and seconds summed per ``keys``, and their ratio."""
    sums = rows.groupby(keys, as_index=False)[["images", "seconds"]].sum()
    return sums.assign(images_per_second=sums["images"] / sums["seconds"])


@dataclass
class BestConfigResult:
    selection: query.RunSelection
    training: list[Ranked]
    training_by_cost: list[Ranked]  # seconds per epoch, Pareto front marked (:mod:`.training_cost`)
    preprocess: dict  # "by_speed" / "by_cost" -> ranking
    speedtest: dict
    excluded: list[overfitting.Exclusion]
    notes: list[str]
    prices: pricing.Prices
    overfitting: overfitting.OverfittingResult
    preprocess_table: pd.DataFrame
    speedtest_rows: pd.DataFrame
    rank_by: str = "speed"
    tags_written: bool = False
    champion: dict | None = None  # the registered model the alias points at (registry.Champion.as_dict)
    # section ("train", "preprocess", "speedtest") -> its comparable groups (:mod:`.comparable`), each ranked
    # apart; training, preprocess and speedtest above are the rankings of the group marked chosen
    groups: dict[str, list[comparable.Group]] = field(default_factory=dict)
    group_choice: dict[str, str] = field(default_factory=dict)  # section -> which group the winner is from, why

    def _contests(self) -> dict[str, tuple[list[Ranked], str, str]]:
        """Per section: the ranking its winner tops, what it ranks and by what. The speed test's winner
        is the fastest (or cheapest) shape reading :data:`PREFERRED_SPEEDTEST_SOURCE` if it was timed."""
        which = "by_speed" if self.rank_by == "speed" else "by_cost"
        sources = [r.key["source"] for r in self.speedtest[which]]
        src = PREFERRED_SPEEDTEST_SOURCE if PREFERRED_SPEEDTEST_SOURCE in sources else next(iter(sources), None)
        return {
            "train": (self.training, "training configuration", "val_accuracy at the judged epoch"),
            "preprocess": (self.preprocess[which], f"cluster shape for preprocessing ({self.rank_by})", self.rank_by),
            "speedtest": (
                [r for r in self.speedtest[which] if r.key["source"] == src],
                f"cluster shape for reading {src} ({self.rank_by})" if src else "speed-test cluster shape",
                f"{self.rank_by} reading {src}",
            ),
        }

    def statements(self) -> dict:
        return {
            "training" if section == "train" else section: _distinguishable(ranking, what)
            for section, (ranking, what, _) in self._contests().items()
        }

    @property
    def winners(self) -> dict:
        """section -> {"key": ..., "run_ids": [...], "by": ...} of each section's top."""
        return {
            section: {"key": ranking[0].key, "run_ids": ranking[0].run_ids, "by": by}
            for section, (ranking, _, by) in self._contests().items()
            if ranking
        }

    def as_dict(self) -> dict:
        return {
            "selection": self.selection.as_dict(),
            "rank_by": self.rank_by,
            "training": [r.as_dict() for r in self.training],
            "training_by_cost": [r.as_dict() for r in self.training_by_cost],
            "preprocess": {k: [r.as_dict() for r in v] for k, v in self.preprocess.items()},
            "speedtest": {k: [r.as_dict() for r in v] for k, v in self.speedtest.items()},
            "conclusions": self.statements(),
            "winners": self.winners,
            "excluded": [e.as_dict() for e in self.excluded],
            "notes": self.notes,
            "prices": {
                "source": self.prices.source,
                "date": self.prices.date,
                "regions": list(self.prices.regions),
                "currency": self.prices.currency,
                "priced": pricing.PRICED_RUNS,
                "covers": {pricing.JOB: pricing.JOB_COVERS, pricing.CLUSTER_LIFE: pricing.LIFE_COVERS},
                "dataproc_create_delete_seconds": self.prices.dataproc_create_delete_seconds,
                "dataproc_create_delete": "an estimate from the price table: no run records these operations",
            },
            "tags_written": self.tags_written,
            "champion": self.champion,
            "comparable_groups": {
                section: {"statement": self.group_choice.get(section, ""), "groups": [g.as_dict() for g in groups]}
                for section, groups in self.groups.items()
            },
        }


def analyse(
    selection: query.RunSelection,
    runs: pd.DataFrame,
    thresholds: overfitting.Thresholds = overfitting.Thresholds(),
    prices: pricing.Prices | None = None,
    rank_by: str = "speed",
    confidence: float = 0.95,
) -> BestConfigResult:
    prices = prices or pricing.load_prices()
    of = overfitting.analyse(selection, runs, thresholds)
    training, ex_train = rank_training(of, confidence)
    pre, ex_pre, pre_table = rank_preprocess(runs, prices, confidence)
    speed, ex_speed, notes, speed_rows = rank_speedtest(selection, runs, prices, confidence)
    for group in pre + speed:
        for r in group.rankings["by_speed"]:
            if r.extra.get("hourly_cost") is None:
                notes.append(f"{comparable.item_text(r.key)}: no cost ({r.extra.get('cost_note')})")
    which = "by_speed" if rank_by == "speed" else "by_cost"
    groups = {"train": training, "preprocess": pre, "speedtest": speed}
    choice = {
        "train": comparable.choose(training, TRAINING_RANKING, "configurations"),
        "preprocess": _choose_shapes(pre, which),
        "speedtest": _choose_shapes(speed, which),
    }
    return BestConfigResult(
        selection,
        _chosen(training).get(TRAINING_RANKING, []),
        training_cost.rank_by_cost(runs, confidence),
        _chosen(pre) or {"by_speed": [], "by_cost": []},
        _chosen(speed) or {"by_speed": [], "by_cost": []},
        ex_train + ex_pre + ex_speed,
        notes,
        prices,
        of,
        pre_table,
        speed_rows,
        rank_by,
        groups=groups,
        group_choice={section: why for section, why in choice.items() if why},
    )


def _choose_shapes(groups: list[comparable.Group], which: str) -> str:
    """:func:`comparable.choose` by ``which``; by speed when no group ranks by it (no priced run for
    ``--rank-by cost``: the speed rankings are still shown, and there is no winner)."""
    return comparable.choose(groups, which, "shapes") or comparable.choose(groups, "by_speed", "shapes")


def _chosen(groups: list[comparable.Group]) -> dict[str, list[Ranked]]:
    """The rankings of the group :func:`comparable.choose` marked, or none."""
    return next((group.rankings for group in groups if group.chosen), {})


def write_tags(result: BestConfigResult) -> None:
    """``best_config=true`` on the winners' runs, ``false`` on the other ranked runs of the same task (of
    every comparable group: a run of another group did not win)."""
    ranking = {"train": TRAINING_RANKING, "preprocess": "by_speed", "speedtest": "by_speed"}
    for task, name in ranking.items():
        run_ids = {r for g in result.groups.get(task, []) for x in g.rankings.get(name, []) for r in x.run_ids}
        won = set(result.winners.get(task, {}).get("run_ids", []))
        for run_id in sorted(run_ids):
            query.set_tags(result.selection.tracking_uri, run_id, {TAG_BEST: "true" if run_id in won else "false"})
    result.tags_written = True


def register_winner(result: BestConfigResult, model_name: str | None) -> None:
    """Register the model of the winning training configuration's best run that logged one as
    ``model_name``, with the alias ``champion``, and test it (:mod:`.registry`); ``result.champion`` says
    which, with its validation and test scores."""
    if not model_name or not result.training:
        return
    top = result.training[0]
    verdicts = {verdict.run_id: verdict for verdict in result.overfitting.verdicts}
    candidates = sorted(top.run_ids, key=lambda run_id: (-(verdicts[run_id].judged_val_accuracy or 0.0), run_id))
    tags = {
        **{key: str(value) for key, value in top.key.items()},
        "config.mean_val_accuracy": f"{top.score.mean:.4f}",
        "config.runs": str(top.score.n),
    }
    champion = registry.register_champion(
        result.selection.tracking_uri,
        result.selection.experiment_id,
        candidates,
        model_name,
        tags,
        {run_id: _run_tags(verdicts[run_id]) for run_id in candidates},
    )
    if champion is None:
        result.notes.append(
            f"no model registered: no run of the winning training configuration {top.key} logged an MLflow Model"
        )
    else:
        result.champion = champion.as_dict()


def _run_tags(verdict: overfitting.Verdict) -> dict[str, str]:
    """What the registered version says of its own run: the epoch it was judged at and its score there."""
    return {
        "run.judged_epoch": str(verdict.judged_epoch),
        "run.judged_val_accuracy": f"{verdict.judged_val_accuracy:.4f}",
    }


def _ranking_rows(
    ranking: list[Ranked], unit: str, key_cols: list[str] | None = None, extra: dict[str, str] | None = None
) -> list[dict]:
    """A row per ranked item: its rank, key (``key_cols``; default: a training configuration's), score, and
    ``extra`` columns (column -> key in :attr:`Ranked.extra`)."""
    key_cols = key_cols or (list(ranking[0].key) if ranking else list(CONFIG_PARAMS))
    return [
        {
            "rank": i,
            **{c: r.key[c] for c in key_cols},
            unit: r.score.mean,
            "ci_low": r.score.low,
            "ci_high": r.score.high,
            "n": r.score.n,
            **{column: r.extra[key] for column, key in (extra or {}).items()},
        }
        for i, r in enumerate(ranking, 1)
    ]


def tables(result: BestConfigResult) -> dict[str, list[dict]]:
    """The rankings of every comparable group as plain rows (for the terminal and the Markdown report)."""
    shape = list(comparable.SHAPE_KEYS)
    read = ["source", *shape]
    pareto = {judged.VALUE_METRIC: judged.VALUE_METRIC, "pareto": "pareto_optimal"}
    life = {pricing.CLUSTER_LIFE: pricing.CLUSTER_LIFE, pricing.LIFE_INCLUDES: pricing.LIFE_INCLUDES}
    groups = result.groups
    by_cost = _ranking_rows(result.training_by_cost, names.SECONDS_PER_EPOCH, extra=pareto)
    if len({r.extra.get(training_cost.GROUP) for r in result.training_by_cost}) > 1:
        by_cost = [{"group": r.extra[training_cost.GROUP], **row} for r, row in zip(result.training_by_cost, by_cost)]
    return {
        "training": _group_rows(groups.get("train", []), TRAINING_RANKING, judged.MONITOR),
        "training_by_cost": by_cost,
        "preprocess_by_speed": _group_rows(groups.get("preprocess", []), "by_speed", names.IMAGES_PER_SECOND, shape),
        "preprocess_by_cost": _group_rows(groups.get("preprocess", []), "by_cost", pricing.JOB, shape, life),
        "speedtest_by_speed": _group_rows(groups.get("speedtest", []), "by_speed", names.IMAGES_PER_SECOND, read),
        "speedtest_by_cost": _group_rows(groups.get("speedtest", []), "by_cost", pricing.JOB, read, life),
    }


WINNERS_GROUP = " (the winner's)"


def _group_rows(
    groups: list[comparable.Group],
    ranking: str,
    unit: str,
    key_cols: list[str] | None = None,
    extra: dict[str, str] | None = None,
) -> list[dict]:
    """The rows (:func:`_ranking_rows`) of every group's ``ranking``, the winner's group first, each
    ranked apart; a first column ``group`` names the group when there are several."""
    ordered = sorted(groups, key=lambda group: not group.chosen)
    rows = []
    for group in ordered:
        for row in _ranking_rows(group.rankings.get(ranking, []), unit, key_cols, extra):
            label = group.label + (WINNERS_GROUP if group.chosen else "")
            rows.append({"group": label, **row} if len(groups) > 1 else row)
    return rows


def cost_title(prices: pricing.Prices) -> str:
    """How the shapes' cost tables rank, in their titles (what each cost covers: :func:`pricing.covers`)."""
    return (
        f"by the job's cost per 1,000 images ({pricing.JOB}; {pricing.CLUSTER_LIFE} beside it is the bill's; "
        f"{prices.currency}; {pricing.PRICED_RUNS})"
    )


def render_text(result: BestConfigResult) -> str:
    out = [f"Runs: {result.selection.describe()}", ""]
    statements = result.statements()
    titles = {
        "training": "Training configurations by validation accuracy at the judged epoch (best val_accuracy, earliest on ties)",
        "training_by_cost": "Training configurations by seconds per epoch on this machine (model.fit's seconds over "
        "the epochs run, not money; pareto: no other is both more accurate, by best_val_accuracy, and cheaper; the "
        "cost-aware search's front)",
        "preprocess_by_speed": "Preprocessing: cluster shapes by images/s",
        "preprocess_by_cost": f"Preprocessing: cluster shapes {cost_title(result.prices)}",
        "speedtest_by_speed": "Speed test: cluster shapes by images/s, per source",
        "speedtest_by_cost": f"Speed test: cluster shapes {cost_title(result.prices)}",
    }
    for name, rows in tables(result).items():
        out += [titles[name], common.markdown_table(rows)]
        if name.endswith("_by_cost") and name != "training_by_cost":
            out += [pricing.covers(result.prices.dataproc_create_delete_seconds), ""]
    out.append("Conclusions:")
    out += [f"  comparable runs ({k}): {why}" for k, why in result.group_choice.items()]
    out += [f"  {k}: {v['statement']}" for k, v in statements.items()]
    out += [f"  winner ({k}): {comparable.item_text(w['key'])} by {w['by']}" for k, w in result.winners.items()]
    if result.excluded:
        out += ["", "Excluded:"] + [f"  {e.text()}" for e in result.excluded]
    if result.champion:
        out += ["", registry.champion_sentence(result.champion)]
    if result.notes:
        out += ["", "Notes:"] + [f"  {n}" for n in result.notes]
    return "\n".join(out) + "\n"


def add_ranking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prices", default=str(pricing.DEFAULT_PRICES), help=f"price table YAML (default: {pricing.DEFAULT_PRICES})"
    )
    parser.add_argument(
        "--rank-by",
        choices=("speed", "cost"),
        default="speed",
        help="what picks the winning cluster shape for preprocessing and the speed test: images/s or the job's "
        f"cost per 1,000 images ({pricing.JOB}; default: speed); both rankings are always shown, and the cost "
        f"over the cluster's life ({pricing.CLUSTER_LIFE}) beside the job's",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)"
    )


@common.exits_without_runs
def main(argv: list[str] | None = None) -> int:
    parser = common.source_parser("best_config.py", SCRIPT_HELP)
    overfitting.add_threshold_args(parser)
    add_ranking_args(parser)
    parser.add_argument(
        "--no-write-tags", action="store_true", help="only report; do not tag the runs or register a model"
    )
    registry.add_registry_args(parser)
    args = parser.parse_args(argv)
    thresholds = overfitting.thresholds_from_args(args)
    if not 0 < args.confidence < 1:
        parser.error("--confidence must be between 0 and 1")
    try:
        prices = pricing.load_prices(args.prices)
        selection, runs = common.load_runs(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = analyse(selection, runs, thresholds, prices, args.rank_by, args.confidence)
    usable = bool(result.training or result.preprocess["by_speed"] or result.speedtest["by_speed"])

    def write(result: BestConfigResult) -> None:
        write_tags(result)
        register_winner(result, registry.model_name(args))

    return common.finish(
        args, result, usable, f"no run that can be ranked in {selection.describe()}", write, render_text
    )
