"""``torch.export`` programs (``.pt2``): an ATen graph plus its weights, no Python code.

``torch.export.load`` rebuilds the graph from the archive's JSON; the card is the
archive's extra file ``gigaseg.card`` (``torch.export.save(ep, f, extra_files=…)``).
The program must have been exported with dynamic batch and spatial sizes
(``Dim.AUTO``), or it runs only at the sizes it was exported at.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError
from models.formats.detect import EXPORTED_PROGRAM
from models.formats.opened import CARD_KEY, OpenedNetwork


class ExportedNetwork(nn.Module):
    """The program's module, kept in the mode it was exported in (it cannot switch: ``eval()`` is a no-op)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.program = module

    def train(self, mode: bool = True) -> ExportedNetwork:
        """Record ``mode`` only: an exported graph has its batch-norm and dropout behaviour fixed."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def open_exported_program(path: Path) -> OpenedNetwork:
    """Open ``path`` as a ``torch.export`` program: its module (CPU) and card."""
    extra = {CARD_KEY: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable torch.export program ({first})") from None
    placeholders = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    rank = None
    if len(placeholders) == 1:
        value = program.graph_signature.user_inputs[0]
        node = next((n for n in program.graph.nodes if n.name == value), None)
        meta = node.meta.get("val") if node is not None else None
        rank = meta.dim() if isinstance(meta, torch.Tensor) else None
    text = extra[CARD_KEY]
    text = text.decode() if isinstance(text, bytes) else text
    return OpenedNetwork(
        ExportedNetwork(program.module()), EXPORTED_PROGRAM, card_text=text or None, input_rank=rank
    )


def save_exported_program(program: torch.export.ExportedProgram, path: Path, card_json: str) -> Path:
    """Save ``program`` with ``card_json`` as its card."""
    torch.export.save(program, str(path), extra_files={CARD_KEY: card_json})
    return path
