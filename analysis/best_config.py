"""Rank training configurations and cluster shapes (speed, cost) with confidence intervals; tag the winners.

Run from the repository root: `python analysis/best_config.py [--experiment NAME | --parent-run ID] [--tracking-uri URI] [--json]`
(`--help` for the thresholds and their defaults). The logic lives in `bigimage.analysis_lib.best_config`.
"""

from bigimage.analysis_lib.best_config import main

if __name__ == "__main__":
    raise SystemExit(main())
