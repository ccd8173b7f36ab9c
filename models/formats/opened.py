"""What a format's reader hands back: the bare network and what the file says about it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from models.checkpoint import CARD_KEY  # also an external file's: ONNX metadata key, archive extra file

__all__ = ["CARD_KEY", "OpenedNetwork"]


@dataclass
class OpenedNetwork:
    """A network opened from a file, before its card and geometry are settled.

    ``net`` maps ``(N, C, *size)`` float32 to logits ``(N, classes, *size)`` for sizes
    that are multiples of its downsampling. ``card_text`` is the embedded card's JSON
    (None: the file carries none). ``input_rank``, ``in_channels`` and ``num_classes``
    are what the file declares about its input and output (None: not declared).
    """

    net: nn.Module
    format: str
    card_text: str | None = None
    input_rank: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
