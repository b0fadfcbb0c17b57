"""Stages by name: each stage module registers a factory with ``@stage("name")``; the cascade
builds the stages the settings list from here. A new stage is one module and one registration
(plus its name in ``BUILTIN_MODULES`` so it is imported)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from dupwatch.detectors.protocol import Stage
from dupwatch.errors import ConfigError
from dupwatch.detectors.options import Options

BUILTIN_MODULES = ("dupwatch.detectors.sha256", "dupwatch.detectors.phash",
                   "dupwatch.detectors.embedding", "dupwatch.detectors.verify")


@dataclass(frozen=True)
class StageContext:
    """What a factory may use: the options, the shipped calibrations, and a hook for stages
    that describe images in batches."""
    options: Options
    calibrations: dict
    on_batch: Callable[[int, float], None] | None = None


StageFactory = Callable[[StageContext], Stage]
_FACTORIES: dict[str, StageFactory] = {}


def stage(name: str) -> Callable[[StageFactory], StageFactory]:
    """Register the decorated function as the factory of stage ``name`` (once per name)."""
    def register(factory: StageFactory) -> StageFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"stage {name!r} is registered twice ({_FACTORIES[name].__module__} "
                             f"and {factory.__module__})")
        _FACTORIES[name] = factory
        return factory
    return register


def stage_names() -> list[str]:
    _import_builtins()
    return sorted(_FACTORIES)


def build_stage(name: str, context: StageContext) -> Stage:
    _import_builtins()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown stage {name!r} in stages (choose from "
                          f"{', '.join(stage_names())})")
    return factory(context)


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
