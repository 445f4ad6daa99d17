"""The search space: Hydra's sweep syntax (``choice``, ``range``, ``interval``, ``tag(log, ...)``) in,
Optuna distributions out, and a trial's params back as overrides. A sweep on the command line replaces
the YAML's entry for its key; any other override there is one every trial gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from bigimage.errors import UserError

if TYPE_CHECKING:
    from hydra.core.config_loader import ConfigLoader
    from optuna.distributions import BaseDistribution


class SearchSpaceError(UserError, ValueError):
    """A search-space entry Optuna cannot sample; the message names the key and what is valid."""


@dataclass(frozen=True)
class Space:
    """What varies (key -> distribution) and what every trial gets as it is (``key=value`` overrides)."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]


def parse(params: Mapping[str, str], arguments: Sequence[str], config_loader: ConfigLoader | None = None) -> Space:
    """The space from the YAML's ``params`` and the command line's ``arguments`` (which win per key)."""
    parser = OverridesParser.create(config_loader=config_loader)
    entries = [f"{key}={value}" for key, value in params.items()]
    overrides = parser.parse_overrides([*entries, *arguments])
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution(override)
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    if not distributions:
        raise SearchSpaceError(
            "the search space is empty: give hydra.sweeper.params (e.g. hparams_search=train_optuna) or a sweep "
            "on the command line, e.g. batch_size=16,32,64"
        )
    return Space(distributions, list(fixed.values()))


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        choices = [_primitive(key, item) for item in value.list]
        if log:
            raise SearchSpaceError(f"{key}: tag(log, ...) applies to interval() and range(), not to a choice")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        if value.start is None or value.stop is None:
            raise SearchSpaceError(f"{key}: range() needs a start and a stop")
        values = list(value.range())
        if not values:
            raise SearchSpaceError(f"{key}: {override.input_line} holds no value (the stop is excluded)")
        if all(isinstance(item, int) for item in values):
            return IntDistribution(values[0], values[-1], step=int(value.step), log=log and value.step == 1)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        if value.start is None or value.end is None or not value.start < value.end:
            raise SearchSpaceError(f"{key}: interval(low, high) needs low < high (got {override.input_line})")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SearchSpaceError(f"{key}: {override.input_line} is not a choice, range or interval")


def _primitive(key: str, item: Any) -> Any:
    if item is None or isinstance(item, (bool, int, float, str)):
        return item
    raise SearchSpaceError(f"{key}: a choice's values must be numbers, strings, booleans or null (got {item!r})")


def override_value(value: Any) -> str:
    """A sampled value as Hydra's override grammar reads it back (``1e-05``, ``mirrored``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # a float's shortest round-trip form


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's params as job overrides, in a stable order."""
    return [f"{key}={override_value(value)}" for key, value in params.items()]
