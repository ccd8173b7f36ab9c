"""The architecture registry: names → factories plus what the engine must know.

Each architecture module registers itself with :func:`register`. An entry
declares what the tiled inference engine needs to treat the network correctly
without looking inside it: spatial dimensionality, the total downsampling factor
(input sizes are padded to a multiple of it), the receptive-field reach (how far
one output pixel sees, which sizes the halo), the default tile size, and whether
the network is fully convolutional.

Values that depend on the configuration (a deeper U-Net downsamples more) are
given as callables of the resolved configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

ConfigValue = int | Callable[[Mapping[str, Any]], int]


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture.

    ``defaults`` is the paper's canonical configuration, including the paper's
    own ``in_channels`` and ``num_classes``; ``factory(**config)`` builds the bare
    network, which maps ``(N, in_channels, *size)`` to ``(N, num_classes, *size')``
    for sizes that are multiples of the downsampling factor.

    ``small`` is a narrow configuration with the same topology (overrides on top
    of ``defaults``): what smoke tests and quick benchmarks build, so every
    registered architecture is exercised without paper-sized widths.

    ``aux_heads`` names the auxiliary (deep-supervision) outputs a network
    returns in training mode, in order, each with the weight the paper gives
    its loss. Such a network returns ``{"out": logits, "aux": [logits, ...]}``
    in training mode (the wrapper brings every entry to the input size) and the
    logits tensor alone in eval mode; a training loop adds
    ``weight · loss(aux[i])`` for each head.

    ``se_loss`` is the weight of a semantic-encoding loss (EncNet): such a
    network also returns per-image class-presence logits ``"se"`` (``(N,
    classes)``) in training mode, trained by binary cross-entropy.
    """

    name: str
    family: str
    factory: Callable[..., nn.Module]
    spatial_dims: int
    downsampling: ConfigValue
    reach: ConfigValue
    default_tile: int
    paper: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fully_convolutional: bool = True
    paper_params: int | None = None
    notes: str = ""
    small: Mapping[str, Any] = field(default_factory=dict)
    aux_heads: Mapping[str, float] = field(default_factory=dict)
    se_loss: float = 0.0

    def resolve_config(self, **overrides: Any) -> dict[str, Any]:
        """The canonical configuration with ``overrides`` applied (``None`` values ignored)."""
        config = dict(self.defaults)
        unknown = {k for k in overrides if k not in config and k not in {"in_channels", "num_classes"}}
        if unknown:
            raise ValueError(
                f"{self.name}: unknown configuration key(s) {sorted(unknown)}; known: {sorted(config)}"
            )
        config.update({k: v for k, v in overrides.items() if v is not None})
        return config

    def downsampling_for(self, config: Mapping[str, Any]) -> int:
        """Total downsampling factor of the network built with ``config``."""
        value = self.downsampling
        return int(value(config) if callable(value) else value)

    def reach_for(self, config: Mapping[str, Any]) -> int:
        """Receptive-field reach (pixels on each side) of the network built with ``config``."""
        value = self.reach
        return int(value(config) if callable(value) else value)


class GlobalContext(nn.Module):
    """Base of modules whose output at a pixel depends on the whole map (attention over all
    positions, context encoding): a network holding one is not fully convolutional, and
    such a module's output is the global contribution alone (the local path runs beside it).
    Global average poolings (``nn.AdaptiveAvgPool2d``) count likewise."""


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` to the registry; names are unique and lower case."""
    if spec.name != spec.name.lower():
        raise ValueError(f"registry names are lower case: {spec.name!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is registered twice")
    if spec.spatial_dims not in (2, 3):
        raise ValueError(f"{spec.name}: spatial_dims must be 2 or 3")
    _REGISTRY[spec.name] = spec
    return spec


class UnknownArchitectureError(KeyError):
    """Raised for a name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_spec(name: str) -> ArchSpec:
    """The registry entry for ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownArchitectureError(f"unknown architecture {name!r}; registered: {known}") from None


def names() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_REGISTRY)


def specs() -> list[ArchSpec]:
    """All registry entries, sorted by name."""
    return [_REGISTRY[n] for n in names()]
