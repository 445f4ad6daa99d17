"""Seaborn figures + a Markdown report, logged as an MLflow run tagged task=analysis.

Run from the repository root: `python analysis/report.py [--experiment NAME | --parent-run ID] [--tracking-uri URI] [--json]`
(`--help` for the thresholds and their defaults). The logic lives in `bigimage.analysis_lib.report`.
"""

from bigimage.analysis_lib.report import main

if __name__ == "__main__":
    raise SystemExit(main())
