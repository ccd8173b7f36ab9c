"""``torch.export`` programs (``.pt2``): an ATen graph plus its weights, no Python code.

``torch.export.load`` rebuilds the graph from the archive's JSON; the card is the
archive's extra file ``gigaseg.card`` (``torch.export.save(ep, f, extra_files=…)``).
The program must have been exported with dynamic batch and spatial sizes
(``Dim.AUTO``), or it runs only at the sizes it was exported at.

``torch.export.load`` unpickles (``weights_only=False``) what an archive marks as
pickled: tensor subclasses, the legacy weights layout, sample inputs the restricted
unpickler refuses. :func:`check_no_pickles` reads the archive's JSON configs first and
refuses any such part (the sample inputs must load with ``weights_only=True``), so only
plain tensor bytes, the JSON graph and restricted unpickling are ever used.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError
from models.formats.detect import EXPORTED_PROGRAM
from models.formats.opened import CARD_KEY, OpenedNetwork


def _safe_tensors(data: bytes) -> bool:
    """Whether a pickled member (the sample inputs) loads with ``weights_only=True`` (tensors and
    containers only), so that ``torch.export.load`` never falls back to a full unpickling."""
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # any refusal of the restricted unpickler
        return False
    return True


def _pickled_parts(archive: zipfile.ZipFile) -> list[str]:
    """Members ``torch.export.load`` would unpickle, or a note that the weights layout is the legacy one."""
    names = archive.namelist()
    configs = [n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))]
    if not any(n.endswith("_weights_config.json") for n in configs):
        return ["weights in the legacy pickled layout"]
    parts = [n for n in names if n.endswith((".pt", ".pkl")) and not _safe_tensors(archive.read(n))]
    for name in configs:
        entries = json.loads(archive.read(name)).get("config", {})
        parts += [f"{fqn} in {name}" for fqn, meta in entries.items() if meta.get("use_pickle")]
    return parts


def check_no_pickles(path: Path) -> None:
    """Refuse a ``.pt2`` archive that has a part ``torch.export.load`` would unpickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            parts = _pickled_parts(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch.export archive ({exc})") from None
    if parts:
        shown = ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
        raise CheckpointError(
            f"{path}: a torch.export archive with pickled parts ({shown}), which gigaseg never loads "
            "(unpickling can run code)"
        )


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
    check_no_pickles(path)
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
