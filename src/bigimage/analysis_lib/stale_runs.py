"""``analysis/stale_runs.py``: end the RUNNING runs whose process is dead KILLED, with the reason as tag
``error`` (docs/mlflow.md, "Failures, interrupts and stale runs")."""

from __future__ import annotations

import argparse
import sys

from bigimage.analysis_lib import common
from bigimage.tracking import liveness, query

MARKED_BY = "analysis/stale_runs.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = common.script_parser(
        "stale_runs.py",
        "End RUNNING runs whose process is gone (this host) or silent (any host) as KILLED, "
        "with the reason in the tag 'error'; print what was changed.",
    )
    parser.add_argument("--experiment", default=None, help="experiment name (default: every experiment in the store)")
    parser.add_argument(
        "--older-than",
        type=float,
        default=liveness.DEFAULT_OLDER_THAN_SECONDS,
        metavar="SECONDS",
        help="a run from another host (or without process tags) is stale when its last heartbeat is older "
        f"than this (default {liveness.DEFAULT_OLDER_THAN_SECONDS:g}; runs beat every "
        f"{liveness.HEARTBEAT_SECONDS:g} s); a run of this host whose process is gone is stale at once",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list; change nothing")
    args = parser.parse_args(argv)
    if args.older_than < 0:
        parser.error("--older-than must be >= 0")
    return args


@common.exits_without_runs
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = args.tracking_uri or query.default_tracking_uri()
    client = query.client_for(uri)
    if args.experiment:
        experiment_ids = [query.select(uri, args.experiment).experiment_id]  # NoRunsError names the known ones
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    verdicts = liveness.find_stale_runs(client, experiment_ids, args.older_than) if experiment_ids else []
    rows = []
    for verdict in verdicts:
        if not verdict.stale:
            action = "left RUNNING"
        elif args.dry_run:
            action = "would mark KILLED"
        else:
            action = "marked KILLED" if liveness.mark_killed(client, verdict, MARKED_BY) else "ended meanwhile"
        rows.append({**verdict.as_dict(), "action": action})
    changed = [row for row in rows if row["action"] == "marked KILLED"]
    if args.json:
        common.print_json(
            {
                "tracking_uri": uri,
                "experiment": args.experiment,
                "older_than_seconds": args.older_than,
                "dry_run": args.dry_run,
                "running": rows,
                "marked": [row["run_id"] for row in changed],
            }
        )
        return 0
    columns = ["run_id", "run_name", "task", "host", "pid", "last_seen", "action", "reason"]
    sys.stdout.write(common.markdown_table(rows, columns))
    where = f"experiment '{args.experiment}'" if args.experiment else "every experiment"
    verb = "would mark" if args.dry_run else "marked"
    count = sum(row["stale"] for row in rows) if args.dry_run else len(changed)
    sys.stdout.write(f"{len(rows)} RUNNING run(s) in {where} at {uri}; {verb} {count} KILLED\n")
    return 0
