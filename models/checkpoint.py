"""Checkpoints: weights plus everything inference needs, loaded without pickles.

A checkpoint is one ``.safetensors`` file. The tensors are the model's state
dict; the header's metadata holds a JSON :class:`ModelCard` under the key
``gigaseg.card``: architecture name and configuration, class names and colours,
input bands and their normalisation, tile size. Safetensors never executes code
on load, so a checkpoint from a stranger is data, not a program.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.wrapper import SegmentationModel

CARD_KEY = "gigaseg.card"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a gigaseg model."""


CONVENTIONAL_COLORS: dict[str, tuple[int, int, int]] = {
    "water": (40, 110, 220),
    "forest": (20, 110, 40),
    "tree": (20, 110, 40),
    "grassland": (150, 210, 90),
    "grass": (150, 210, 90),
    "shrubland": (170, 160, 60),
    "cropland": (230, 200, 80),
    "agriculture": (230, 200, 80),
    "built-up": (200, 60, 60),
    "building": (200, 60, 60),
    "road": (120, 120, 120),
    "bare": (180, 160, 130),
    "barren": (180, 160, 130),
    "snow": (240, 240, 250),
    "ice": (240, 240, 250),
    "wetland": (60, 150, 160),
    "cloud": (250, 250, 250),
    "background": (0, 0, 0),
}
"""Colours an analyst expects for common land-cover class names (lower case), used when a card has none."""


def default_colors(num_classes: int, names: Sequence[str] | None = None) -> list[tuple[int, int, int]]:
    """A colour per class: the conventional one for a known land-cover name, else a distinct,
    stable golden-angle hue.

    >>> default_colors(2, ["water", "class_1"])[0]
    (40, 110, 220)
    """
    import colorsys

    colors = []
    for i in range(num_classes):
        name = names[i].strip().lower() if names is not None and i < len(names) else ""
        if name in CONVENTIONAL_COLORS:
            colors.append(CONVENTIONAL_COLORS[name])
            continue
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


@dataclass
class ModelCard:
    """What a model needs at inference, beside its weights.

    ``bands`` are 1-based input band indices (``None``: all bands, in order).
    ``band_names`` name the bands the network reads, in its order (``None``: unnamed):
    a raster whose band descriptions name them is matched by name in any order, and a
    STAC item's assets are picked by them (``eo:bands`` names or common names such as
    ``red``, ``nir``).
    ``normalization`` is one of ``{"kind": "none"}``, ``{"kind": "scale",
    "scale": s, "offset": o}`` (x * s + o), ``{"kind": "meanstd", "mean": [...],
    "std": [...]}`` (per selected band), ``{"kind": "minmax", "min": [...],
    "max": [...]}``, ``{"kind": "window", "low": …, "high": …}`` (CT window: clip,
    map to [0, 1]), or the per-volume ``{"kind": "zscore"}`` / ``{"kind":
    "percentile", "lower": …, "upper": …}``, resolved once per scene into fixed
    values; the engine applies it per block, identically everywhere.

    ``gsd`` is the ground sample distance (m/px) a raster model was trained at,
    ``spacing`` the voxel spacing (mm, per axis) of a volume model. A model in an
    external format (ONNX, TorchScript, ``torch.export``; :mod:`models.formats`)
    also carries the geometry the engine needs in ``spatial_dims``, ``downsampling``
    and ``reach`` (``None``: measured by probing the model when it is loaded); a
    native checkpoint's geometry comes from its registered architecture.
    """

    arch: str
    config: dict[str, Any]
    class_names: list[str]
    class_colors: list[tuple[int, int, int]] = field(default_factory=list)
    bands: list[int] | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    tile_size: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    band_names: list[str] | None = None
    gsd: float | None = None
    spacing: list[float] | None = None
    spatial_dims: int | None = None
    downsampling: int | None = None
    reach: int | None = None

    def __post_init__(self) -> None:
        if self.band_names is not None:
            self.band_names = [str(n) for n in self.band_names]
            channels = self.config.get("in_channels")
            if channels is not None and len(self.band_names) != int(channels):
                raise CheckpointError(
                    f"{len(self.band_names)} band names {self.band_names} for {channels} input channels"
                )
        if not self.class_colors:
            self.class_colors = default_colors(len(self.class_names), self.class_names)
        self.class_colors = [tuple(int(c) for c in rgb) for rgb in self.class_colors]
        if len(self.class_colors) != len(self.class_names):
            raise CheckpointError("class_colors and class_names differ in length")
        if int(self.config.get("num_classes", len(self.class_names))) != len(self.class_names):
            raise CheckpointError(
                f"config says {self.config.get('num_classes')} classes "
                f"but {len(self.class_names)} class names are given"
            )

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Number of input channels the network takes."""
        return int(self.config["in_channels"])

    def to_json(self) -> str:
        """The card as JSON (the checkpoint header stores this)."""
        return json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card written by :meth:`to_json`."""
        data = json.loads(text)
        data.pop("format", None)
        return cls(**data)


def card_for(
    model: SegmentationModel,
    class_names: Sequence[str] | None = None,
    **fields: Any,
) -> ModelCard:
    """A card describing ``model`` (class names default to ``class_0 …``)."""
    names = list(class_names) if class_names else [f"class_{i}" for i in range(model.num_classes)]
    return ModelCard(arch=model.arch, config=dict(model.config), class_names=names, **fields)


def _give_normal_permissions(path: Path) -> None:
    """safetensors writes 0600; give the file the mode any other output gets (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save_checkpoint(path: str | os.PathLike[str], model: SegmentationModel, card: ModelCard) -> Path:
    """Write weights + card to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(state, str(tmp), metadata={CARD_KEY: card.to_json()})
        _give_normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
"""How ``torch.save`` files start: a zip archive (PyTorch ≥ 1.6) or a bare pickle (protocol 2–5)."""


def pickle_refusal(path: Path) -> CheckpointError:
    """The one line refusing a ``torch.save`` pickle, and what to do instead."""
    return CheckpointError(
        f"{path}: a PyTorch pickle (torch.save), which gigaseg never loads (unpickling can run code); "
        "if you trust it, load it yourself and save it with models.checkpoint.save_checkpoint "
        "(safetensors + model card) or export it (TorchScript, torch.export .pt2, ONNX)"
    )


def _refuse_pickle(path: Path) -> None:
    """Say what a PyTorch pickle is, and what to do, instead of a safetensors header error."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return  # said by the safetensors reader below
    if head[8:9] == b"{":
        return  # a safetensors header (8-byte length, then JSON), whatever its length's bytes are
    if head.startswith(PICKLE_MAGIC):
        raise pickle_refusal(path)


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read only the card of a checkpoint (no tensors loaded)."""
    from safetensors import safe_open

    path = Path(path)
    _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a gigaseg checkpoint ({exc})") from None
    if CARD_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without a gigaseg model card")
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable model card ({exc})") from None


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, ModelCard]:
    """Build the architecture named in the card and load the weights (no pickle)."""
    from models import build

    card = read_card(path)
    model = build(card.arch, **card.config)
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit {card.arch} ({exc})") from None
    return model.to(device).eval(), card
