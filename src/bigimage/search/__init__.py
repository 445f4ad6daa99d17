"""Search instead of grid: a Hydra sweeper of the project's own on Optuna (``hparams_search=...``).

* :mod:`.space` turns Hydra's sweep syntax (``choice``, ``interval``, ``range``, ``tag(log, ...)``) into
  Optuna distributions and a trial's params back into job overrides;
* :mod:`.study` opens the study in its storage beside the MLflow store (resume: same name, same study);
* :mod:`.sweep` asks the study for trials, launches them as Hydra jobs and tells it their results;
* :mod:`.trial` is the job's side: the objective ``run.py`` returns, the run's tags, and the reporter
  through which a training's chief worker sends per-epoch validation accuracy to the pruner;
* :mod:`.summary` writes the study's outcome (best trial, counts, figures, Pareto front) on the parent run.

Optuna is imported inside functions: every ``run.py`` start imports the sweeper plugin, most never search.
"""
