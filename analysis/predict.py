"""Predict before you rent: fit the scaling model on the runs, forecast time and cost of each cluster shape.

Run from the repository root: `python analysis/predict.py [--experiment NAME | --parent-run ID] [--tracking-uri URI]
[--images N] [--shapes single,maximal,four] [--json]` (`--help` for the rest). The logic lives in
`bigimage.analysis_lib.predict` (command line, report section), `.forecast` (runs -> points -> forecasts)
and `.scaling` (the model).
"""

from bigimage.analysis_lib.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
