"""Resolving ``-m MODEL``: a checkpoint file written by gigaseg, a model made elsewhere
(ONNX, TorchScript, ``torch.export`` ``.pt2``; :mod:`models.formats`), ``arch:NAME``, or a
registered version ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (MLflow registry).

``arch:NAME`` builds an untrained registered architecture with seeded weights
(for benchmarks and smoke runs); its card names classes ``class_0 …`` and feeds
the raw pixel values.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from models import SegmentationModel, build, get_spec
from models.checkpoint import CheckpointError, ModelCard, card_for
from models.formats import load_model_file
from models.registry import UnknownArchitectureError
from pipeline.errors import InputError

ARCH_PREFIX = "arch:"


def check_model_source(source: str) -> None:
    """Cheap check of ``-m`` before any work starts: a registered ``arch:NAME`` or an existing file.

    Registry URIs (``models:/…``) are resolved when the model is loaded.
    """
    if source.startswith(ARCH_PREFIX):
        try:
            get_spec(source[len(ARCH_PREFIX) :])
        except UnknownArchitectureError as exc:
            raise InputError(f"-m {source}: {exc}") from None
    elif "://" not in source and not source.startswith("models:/"):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such model file (give a checkpoint or arch:NAME)")


def load_model(
    source: str,
    in_channels: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> tuple[SegmentationModel, ModelCard]:
    """The model and its card for ``source``; problems become :class:`InputError`."""
    if source.startswith(ARCH_PREFIX):
        name = source[len(ARCH_PREFIX) :]
        try:
            spec = get_spec(name)
        except UnknownArchitectureError as exc:
            raise InputError(f"-m {source}: {exc}") from None
        torch.manual_seed(seed)
        try:
            model = build(name, in_channels=in_channels, num_classes=num_classes)
        except (TypeError, ValueError) as exc:
            raise InputError(f"-m {source}: {exc}") from None
        card = card_for(model, tile_size=spec.default_tile, training={"untrained_seed": seed})
        return model.eval(), card
    if source.startswith("models:/"):
        from pipeline.tracking.model_versions import resolve

        path = resolve(source).checkpoint
    else:
        path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such model file (give a checkpoint or arch:NAME)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: model file is empty")
    try:
        model, card = load_model_file(path)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    except UnknownArchitectureError as exc:
        raise InputError(f"{path}: {exc}") from None
    return model, card


class ModelCache:
    """Models loaded once and shared by every scene that asks for the same one (a batch, an actor).

    Keyed by everything :func:`load_model` depends on: the source, the channel and
    class counts and the seed. A registry alias is resolved at the first load and
    kept for the cache's life (one batch runs one version). ``loads`` counts the
    models actually loaded.

    >>> cache = ModelCache()
    >>> a, _ = cache.load("arch:unet", in_channels=3, num_classes=2)
    >>> b, _ = cache.load("arch:unet", in_channels=3, num_classes=2)
    >>> a is b, cache.loads
    (True, 1)
    """

    def __init__(self) -> None:
        self._models: dict[tuple, tuple[SegmentationModel, ModelCard]] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def load(
        self, source: str, in_channels: int | None = None, num_classes: int | None = None, seed: int = 0
    ) -> tuple[SegmentationModel, ModelCard]:
        """:func:`load_model`, once per key."""
        key = (source, in_channels, num_classes, seed)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(source, in_channels, num_classes, seed)
                self.loads += 1
            return self._models[key]


def model_identity(source: str, seed: int, model: SegmentationModel) -> str:
    """What identifies the weights, for output fingerprints."""
    if source.startswith(ARCH_PREFIX):
        return f"{source}|seed={seed}|{sorted(model.config.items())}"
    return weights_identity(source)


def weights_identity(source: str) -> str:
    """What identifies the weights of ``-m`` without loading them.

    A file's bytes (and its card's), or the registered version a ``models:/`` URI
    resolves to now; ``arch:NAME`` is its own name (its weights are seeded).
    """
    if source.startswith(ARCH_PREFIX):
        return source
    from models.formats.sidecar import sidecar_path
    from pipeline.inputs.ingest import content_id

    if source.startswith("models:/"):
        from pipeline.tracking.model_versions import resolve

        found = resolve(source)
        return f"registry:{found.name}/{found.version}:{content_id(found.checkpoint)}"
    card = sidecar_path(source)
    return f"checkpoint:{content_id(source)}" + (f"|card:{content_id(card)}" if card.is_file() else "")
