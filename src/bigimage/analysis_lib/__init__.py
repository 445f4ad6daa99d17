"""Analysis over MLflow runs (overfitting, best configuration, report).

Reads MLflow through :mod:`bigimage.tracking.query` only and never imports Spark or TensorFlow.
The thin scripts in ``analysis/`` call the ``main`` functions here.
"""
