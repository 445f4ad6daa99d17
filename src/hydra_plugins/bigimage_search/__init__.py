"""Hydra discovers this plugin package under the ``hydra_plugins`` namespace: the project's Optuna sweeper."""
