"""Name → builder registry for driving models (torchvision-style: duplicates raise).

Builders are plain functions ``builder(spec: InputSpec, **arch_kwargs) -> DrivingModel`` registered with
:func:`register_model`. They are registered by the explicit imports in ``driver/models/__init__.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from driver.models.spec import InputSpec

logger = logging.getLogger(__name__)

ModelBuilder = Callable[..., nn.Module]
_BuilderT = TypeVar("_BuilderT", bound=ModelBuilder)

_MODEL_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[_BuilderT], _BuilderT]:
    """Decorator registering ``builder`` under ``name``; raises ``ValueError`` if the name is taken."""

    def decorator(builder: _BuilderT) -> _BuilderT:
        if name in _MODEL_BUILDERS:
            existing = _MODEL_BUILDERS[name].__name__
            raise ValueError(f"model name {name!r} is already registered (by {existing})")
        _MODEL_BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_MODEL_BUILDERS)


def create_model(name: str, spec: InputSpec | None = None, **arch_kwargs: Any) -> nn.Module:
    """Build the registered architecture ``name`` for ``spec`` (default :class:`InputSpec`).

    The returned model carries ``model.arch`` (= ``name``), ``model.spec`` and ``model.arch_kwargs``
    (``arch_kwargs`` plus the values of knobs whose default changed over time, JSON-serialisable) so
    ``create_model(m.arch, m.spec, **m.arch_kwargs)`` rebuilds it. Unknown names raise ``ValueError``
    listing the valid ones.
    """
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    try:
        json.dumps(arch_kwargs)
    except TypeError as error:
        raise ValueError(f"arch_kwargs for {name!r} must be JSON-serialisable: {error}") from error
    spec = InputSpec() if spec is None else spec
    model = _MODEL_BUILDERS[name](spec, **arch_kwargs)
    model.arch = name
    model.spec = spec
    model.arch_kwargs = {**getattr(model, "recorded_kwargs", {}), **arch_kwargs}  # knobs' values, defaults too
    num_params = sum(parameter.numel() for parameter in model.parameters())
    if not any(parameter.is_meta for parameter in model.parameters()):  # a shape-only shell is not news
        logger.info("built %s with %s parameters for %s", name, f"{num_params:,}", spec)
    return model
