"""``hydra/sweeper=bigimage_optuna``: Hydra's Sweeper interface over :mod:`bigimage.search` (current Optuna).

Not ``hydra-optuna-sweeper``: it pins ``optuna<3``, whose database storage fails on SQLAlchemy 2 (which
MLflow needs), so no resume, and it lacks current Optuna's pruning and multi-objective API. This module
only registers the config and hands the sweep to the library; Hydra imports it at every start, so it
imports neither Optuna nor MLflow at the top.

    python run.py -m hparams_search=train_optuna [hydra.sweeper.n_trials=N] [overrides]
"""

# No "from __future__ import annotations": Hydra execs this module outside sys.modules, where a dataclass
# cannot resolve string annotations.

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class ConfirmConf:
    """``hydra.sweeper.confirm``: the best ``top`` trials trained again with ``seeds`` seeds each (0: none)."""

    top: int = 0
    seeds: int = 3


@dataclass
class OptunaSearchConf:
    """``hydra.sweeper.*``. ``sampler`` and ``pruner`` are ``_target_`` configs (Hydra makes them)."""

    _target_: str = "hydra_plugins.bigimage_search.optuna_sweeper.OptunaSearchSweeper"
    study_name: str = "search"
    storage: str | None = None  # None: sqlite beside the MLflow store (bigimage.search.study)
    direction: Any = "maximize"  # or a list, one per optimized_metric
    n_trials: int = 20  # finished + pruned trials the study should hold
    n_jobs: int = 1  # trials per batch (run at once with hydra/launcher=joblib)
    sampler: Any = None  # None: Optuna's default (TPE; NSGA-II for several objectives)
    pruner: Any = None  # None: no pruning
    params: dict[str, str] = field(default_factory=dict)
    confirm: ConfirmConf = field(default_factory=ConfirmConf)


ConfigStore.instance().store(group="hydra/sweeper", name="bigimage_optuna", node=OptunaSearchConf, provider="bigimage")


class OptunaSearchSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        """Made by Hydra from ``hydra.sweeper.*`` (:class:`OptunaSearchConf` less ``_target_``)."""
        from bigimage.search.confirm import Confirm
        from bigimage.search.sweep import Settings

        plain: dict[str, Any] = {
            k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in settings.items()
        }
        plain["params"] = {str(key): str(value) for key, value in (plain["params"] or {}).items()}
        plain["confirm"] = Confirm(**(plain.get("confirm") or {}))
        self.settings = Settings(**plain)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        spec = config.hydra.sweeper.get("pruner")
        self.settings.pruner_spec = OmegaConf.to_container(spec, resolve=True) if spec else None  # type: ignore[assignment]

    def sweep(self, arguments: list[str]) -> Any:
        from pathlib import Path

        from bigimage.search.sweep import sweep

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return sweep(self.settings, arguments, self.config, self.launcher, self.hydra_context.config_loader)
