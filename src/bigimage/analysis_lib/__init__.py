"""Analysis over MLflow runs, read through :mod:`bigimage.tracking.query` only (never Spark or
TensorFlow); the thin scripts in ``analysis/`` call the ``main`` functions here."""
