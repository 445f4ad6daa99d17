"""End the runs that a killed process left RUNNING: KILLED, with the reason in the tag `error`.

Run from the repository root: `python analysis/stale_runs.py [--experiment NAME] [--tracking-uri URI] [--older-than SECONDS] [--dry-run] [--json]`
(`--help` for the defaults). The logic lives in `bigimage.analysis_lib.stale_runs`.
"""

from bigimage.analysis_lib.stale_runs import main

if __name__ == "__main__":
    raise SystemExit(main())
