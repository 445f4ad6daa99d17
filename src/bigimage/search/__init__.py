"""Search instead of grid: a Hydra sweeper of the project's own on Optuna (``hparams_search=...``,
docs/search.md). Optuna is imported inside functions: every ``run.py`` start imports the sweeper plugin.
"""
