"""Search instead of grid: a Hydra sweeper of the project's own on Optuna (``hparams_search=...``,
docs/search.md): :mod:`.space`, :mod:`.study`, :mod:`.sweep`, :mod:`.trial` (the job's side),
:mod:`.confirm` and :mod:`.summary`. Optuna is imported inside functions: every ``run.py`` start imports
the sweeper plugin, most never search.
"""
