"""Rank training configurations by accuracy and cluster shapes by speed and cost within comparable groups;
tag the winners ``best_config`` and register the champion (docs/analysis.md)."""

from __future__ import annotations

import argparse
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
PREPROCESS_METRICS = (names.IMAGES_PER_SECOND, names.SECONDS, names.IMAGES)
PREFERRED_SPEEDTEST_SOURCE = "tfrecord"  # the format the training reads: its speed decides the winner


def _distinguishable(ranking: list[Ranked], what: str) -> dict:
    if not ranking:
        return {"distinguishable": None, "statement": f"no {what} to rank"}
    top = ranking[0]
    if len(ranking) == 1:
        statement = f"only one {what}: {top.score.text()}; nothing to compare with"
        return {"distinguishable": None, "statement": statement}
    runner_up = ranking[1]
    overlap = top.score.overlaps(runner_up.score)
    if overlap is None:
        who = ("they have" if runner_up.score.n == 1 else "it has") if top.score.n == 1 else "the next has"
        statement = f"cannot tell whether the top {what} beats the next: {who} a single run (n=1 gives no interval)"
        return {"distinguishable": None, "statement": statement + "; repeat the runs to get an interval"}
    statement = (
        f"the top {what} ({top.score.text()}) is {'NOT ' if overlap else ''}distinguishable from the next "
        f"({runner_up.score.text()}): their intervals {'overlap' if overlap else 'do not overlap'}"
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
    """Training configurations ranked by mean validation accuracy at the judged epoch, per comparable group."""
    excluded: list[overfitting.Exclusion] = list(of.excluded)
    by_id = of.runs.set_index("run_id", drop=False)
    keys = training_cost.config_params(by_id.loc[[v.run_id for v in of.verdicts]]) if of.verdicts else []
    rows = []
    scores: dict[str, tuple[tuple, float]] = {}  # run id -> its configuration, val accuracy at the judged epoch
    for verdict in of.verdicts:
        row = by_id.loc[verdict.run_id]
        key = _configuration(row, keys, excluded)
        if key is None:
            continue
        if verdict.judged_val_accuracy is None:
            _exclude(excluded, row, "no val_accuracy history: no judged epoch")
            continue
        rows.append(row)
        scores[verdict.run_id] = (key, verdict.judged_val_accuracy)
    groups = comparable.groups(rows, comparable.TRAINING)
    for group in groups:  # its configurations by their mean score, best first (more runs first on ties)
        members: dict[tuple, list[str]] = {}
        for run_id in group.run_ids:
            members.setdefault(scores[run_id][0], []).append(run_id)
        ranking = [
            Ranked(dict(zip(keys, key)), common.mean_interval([scores[r][1] for r in ids], confidence), ids)
            for key, ids in members.items()
        ]
        ranking.sort(key=lambda ranked: (-ranked.score.mean, -ranked.score.n, str(ranked.key)))
        group.rankings[TRAINING_RANKING] = ranking
    return groups, excluded


def _configuration(row: pd.Series, keys: list[str], excluded: list) -> tuple | None:
    """The run's configuration (its values of ``keys``), or None with why in ``excluded``."""
    values = {key: query.param(row, key) for key in keys}
    missing = [key for key in training_cost.BASE_PARAMS if values[key] is None]
    if missing:
        _exclude(excluded, row, f"params of another schema: missing {', '.join(missing)}")
        return None
    try:
        values["batch_size"] = int(float(values["batch_size"]))
    except ValueError:
        _exclude(excluded, row, f"params of another schema: batch_size={values['batch_size']!r} is not a number")
        return None
    return tuple(values[name] if name == "batch_size" else str(values[name]) for name in keys)


def rank_preprocess(
    runs: pd.DataFrame, prices: pricing.Prices, confidence: float = 0.95
) -> tuple[list[comparable.Group], list[overfitting.Exclusion], pd.DataFrame]:
    """Cluster shapes of the preprocess runs by images/s and by cost, per comparable group; and the runs' table."""
    excluded: list[overfitting.Exclusion] = []
    rows, usable = [], []
    for row in _finished(runs, "preprocess", excluded):
        values, why = common.positive_metrics(row, PREPROCESS_METRICS)
        if why:
            _exclude(excluded, row, why)
            continue
        usable.append(row)
        costs = _run_costs(row, prices, values["seconds"], values["images"])
        job = pricing.cost_per_1000(costs["hourly_cost"], values["seconds"], values["images"])
        rows.append({**costs, **values, pricing.JOB: job})
    table = pd.DataFrame(rows)
    return _shape_groups(table, usable, comparable.PREPROCESS, list(comparable.SHAPE_KEYS), confidence), excluded, table


def _run_costs(row: pd.Series, prices: pricing.Prices, job_seconds: float, images: float) -> dict:
    """A run's shape, hourly price (or why none), cluster life (:func:`pricing.life`) and its cost per 1,000 images."""
    hourly, how = pricing.run_hourly(row, prices)
    life = pricing.life(row, job_seconds, prices.dataproc_create_delete_seconds)
    return {
        "run_id": row["run_id"],
        **comparable.shape(row),
        "hourly_cost": hourly,
        "cost_note": how,
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
    """``table`` (a row per run, or per run and source) ranked by ``keys`` in each comparable group of ``runs``."""
    groups = comparable.groups(runs, settings)
    for group in groups:
        group.rankings = _rank_shapes(table[table["run_id"].isin(group.run_ids)], keys, confidence)
    return groups


def _rank_shapes(table: pd.DataFrame, keys: list[str], confidence: float) -> dict[str, list[Ranked]]:
    """Items of ``keys`` by images/s and, for the priced runs, by cost: one value per row of ``table`` (a
    missing value, such as cores Spark did not report, is one of its own)."""
    speed, cost = [], []
    for values, group in table.groupby(keys, dropna=False, sort=False):
        key_values = {key: comparable.plain(value) for key, value in zip(keys, values)}
        run_ids = sorted(set(group["run_id"]))
        priced = group[group[pricing.JOB].notna()]  # Dataproc runs only (hourly_cost says why)
        lives = priced.drop_duplicates("run_id")  # their cluster life: means over the runs
        extra = {
            "hourly_cost": priced["hourly_cost"].iloc[0] if not priced.empty else None,
            "cost_note": (priced if not priced.empty else group)["cost_note"].iloc[0],
            "seconds": common.mean_interval(group["seconds"].tolist(), confidence).as_dict(),
            pricing.CLUSTER_LIFE: float(lives[pricing.CLUSTER_LIFE].mean()) if len(lives) else None,
            pricing.LIFE_SECONDS: float(lives[pricing.LIFE_SECONDS].mean()) if len(lives) else None,
            pricing.LIFE_INCLUDES: pricing.includes(list(lives["life"])),
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


def speedtest_rows(selection: query.RunSelection, runs: pd.DataFrame):
    """The speed-test grid rows of all usable speedtest runs, with their shape and run ids."""
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
        numbers = names.SPEEDTEST_COLUMNS[1:]  # all but "source"
        group = group.assign(**{column: pd.to_numeric(group[column], errors="coerce") for column in numbers})
        usable = group[(group["seconds"] > 0) & (group["images"] > 0)]
        if usable.empty:
            _exclude(excluded, by_id[run_id], f"{names.SPEEDTEST_TABLE} has no row with positive images and seconds")
            continue
        frames.append(usable.assign(**comparable.shape(by_id[run_id])))
        if len(usable) < len(group):
            notes.append(f"{run_id}: {len(group) - len(usable)} grid row(s) without positive images/seconds dropped")
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rows, excluded, notes, by_id


def rank_speedtest(selection: query.RunSelection, runs: pd.DataFrame, prices: pricing.Prices, confidence: float = 0.95):
    """(Source, shape) pairs by images/s and cost per comparable group; a run counts once, its repetitions' mean."""
    rows, excluded, notes, by_id = speedtest_rows(selection, runs)
    if rows.empty:
        return [], excluded, notes, rows
    info = []  # a run's life per 1,000 of every image it read, whichever the source
    for run_id, mine in rows.groupby("run_id", sort=False):
        job = query.metric(by_id[run_id], names.SECONDS) or float(mine["seconds"].sum())  # else the timed reads'
        info.append(_run_costs(by_id[run_id], prices, job, float(mine["images"].sum())))
    costs = pd.DataFrame(info)
    per_rep = _images_per_second(rows, ["run_id", "source", "repetition"])
    rate = per_rep["run_id"].map(costs.set_index("run_id")["hourly_cost"]).astype(float)
    per_rep[pricing.JOB] = rate * per_rep["seconds"] / per_rep["images"] / 3.6  # pricing.cost_per_1000, per row
    means = [names.IMAGES_PER_SECOND, "seconds", "images", pricing.JOB]
    per_run = per_rep.groupby(["run_id", "source"], as_index=False, sort=False)[means].mean().merge(costs, on="run_id")
    keys = ["source", *comparable.SHAPE_KEYS]
    usable = [by_id[run_id] for run_id in per_run["run_id"].unique()]
    return _shape_groups(per_run, usable, comparable.SPEEDTEST, keys, confidence), excluded, notes, rows


def speedtest_by_batch(rows: pd.DataFrame) -> pd.DataFrame:
    """Images/s per (run, shape, source, batch_size), each run's mean over its repetitions."""
    if rows.empty:
        return rows
    keys = ["run_id", "source", "batch_size", "repetition"]
    per_rep = _images_per_second(rows, keys)
    per_run = per_rep.groupby(keys[:-1], as_index=False, sort=False)[[names.IMAGES_PER_SECOND]].mean()
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
        """Per section: the ranking its winner tops, what it ranks and by what (the speed test's: reading
        :data:`PREFERRED_SPEEDTEST_SOURCE` if it was timed)."""
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
    """:func:`comparable.choose` by ``which``, else by speed (no priced run for ``--rank-by cost``)."""
    return comparable.choose(groups, which, "shapes") or comparable.choose(groups, "by_speed", "shapes")


def _chosen(groups: list[comparable.Group]) -> dict[str, list[Ranked]]:
    """The rankings of the group :func:`comparable.choose` marked, or none."""
    return next((group.rankings for group in groups if group.chosen), {})


def write_tags(result: BestConfigResult) -> None:
    """``best_config=true`` on the winners' runs, ``false`` on the other ranked runs of the same task."""
    ranking = {"train": TRAINING_RANKING, "preprocess": "by_speed", "speedtest": "by_speed"}
    for task, name in ranking.items():
        run_ids = {r for g in result.groups.get(task, []) for x in g.rankings.get(name, []) for r in x.run_ids}
        won = set(result.winners.get(task, {}).get("run_ids", []))
        for run_id in sorted(run_ids):
            query.set_tags(result.selection.tracking_uri, run_id, {TAG_BEST: "true" if run_id in won else "false"})
    result.tags_written = True


def register_winner(result: BestConfigResult, model_name: str | None) -> None:
    """Register and test the model of the winning configuration's best run that logged one (:mod:`.registry`)."""
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
        {  # what each version says of its own run: the epoch it was judged at and its score there
            run_id: {
                "run.judged_epoch": str(verdicts[run_id].judged_epoch),
                "run.judged_val_accuracy": f"{verdicts[run_id].judged_val_accuracy:.4f}",
            }
            for run_id in candidates
        },
    )
    if champion is None:
        result.notes.append(
            f"no model registered: no run of the winning training configuration {top.key} logged an MLflow Model"
        )
    else:
        result.champion = champion.as_dict()


def _ranking_rows(
    ranking: list[Ranked], unit: str, key_cols: list[str] | None = None, extra: dict[str, str] | None = None
) -> list[dict]:
    """A row per ranked item: rank, key (``key_cols``), score, and ``extra`` (column -> key in ``Ranked.extra``)."""
    key_cols = key_cols or (list(ranking[0].key) if ranking else list(training_cost.BASE_PARAMS))
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
    """The rows of every group's ``ranking``, the winner's group first; a column ``group`` when there are several."""
    ordered = sorted(groups, key=lambda group: not group.chosen)
    rows = []
    for group in ordered:
        for row in _ranking_rows(group.rankings.get(ranking, []), unit, key_cols, extra):
            label = group.label + (WINNERS_GROUP if group.chosen else "")
            rows.append({"group": label, **row} if len(groups) > 1 else row)
    return rows


def render_text(result: BestConfigResult) -> str:
    out = [f"Runs: {result.selection.describe()}", ""]
    statements = result.statements()
    by_cost = (
        f"by the job's cost per 1,000 images ({pricing.JOB}; {pricing.CLUSTER_LIFE} beside it is the bill's; "
        f"{result.prices.currency}; {pricing.PRICED_RUNS})"
    )
    titles = {
        "training": "Training configurations by validation accuracy at the judged epoch (best val_accuracy, earliest on ties)",
        "training_by_cost": "Training configurations by seconds per epoch on this machine (model.fit's seconds over "
        "the epochs run, not money; pareto: no other is both more accurate, by best_val_accuracy, and cheaper; the "
        "cost-aware search's front)",
        "preprocess_by_speed": "Preprocessing: cluster shapes by images/s",
        "preprocess_by_cost": f"Preprocessing: cluster shapes {by_cost}",
        "speedtest_by_speed": "Speed test: cluster shapes by images/s, per source",
        "speedtest_by_cost": f"Speed test: cluster shapes {by_cost}",
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
        selection, runs = query.load_runs(args.tracking_uri, args.experiment, args.parent_run)
    except (OSError, ValueError) as exc:
        return common.fail(str(exc), 2)
    result = analyse(selection, runs, thresholds, prices, args.rank_by, args.confidence)
    usable = bool(result.training or result.preprocess["by_speed"] or result.speedtest["by_speed"])

    def write(result: BestConfigResult) -> None:
        write_tags(result)
        register_winner(result, registry.model_name(args))

    return common.finish(
        args, result, usable, f"no run that can be ranked in {selection.describe()}", write, render_text
    )
