"""Name -> constructor table behind :func:`dkl_train.models.create_model`.

Each architecture file registers its public names with :func:`register_model`; the names are the
ones mdistiller's ``cifar_model_dict`` uses (``resnet8x4``, ``wrn_40_2``, ``ShuffleV1`` ...), so a
config written for mdistiller names the same network here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(num_classes=..., **kwargs)`` available as ``create_model(name, ...)``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def get_factory(name: str) -> ModelFactory:
    """The constructor registered under ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(
            f"unknown model {name!r}. Known names: {known}; ImageNet models: 'timm:<timm model name>'"
        ) from None


def registered_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)
