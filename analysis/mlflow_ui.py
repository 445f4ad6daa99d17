"""Start the MLflow UI over the project's store, on loopback, and open it on an experiment's runs.

Run from the repository root: `python analysis/mlflow_ui.py [--experiment NAME] [--tracking-uri URI] [--port 5000]`
(`--help` for the rest). The logic lives in `bigimage.analysis_lib.ui`.
"""

from bigimage.analysis_lib.ui import main

if __name__ == "__main__":
    raise SystemExit(main())
