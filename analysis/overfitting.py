"""Flag overfitting (onset epoch, reason) and "validation above training" per training run; tag the runs.

Run from the repository root: `python analysis/overfitting.py [--experiment NAME | --parent-run ID] [--tracking-uri URI] [--json]`
(`--help` for the thresholds and their defaults). The logic lives in `bigimage.analysis_lib.overfitting`.
"""

from bigimage.analysis_lib.overfitting import main

if __name__ == "__main__":
    raise SystemExit(main())
