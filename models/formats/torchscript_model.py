"""TorchScript archives (``torch.jit.save``): TorchScript's own program, run by its interpreter.

The archive is checked to be TorchScript (its ``code/`` folder; :mod:`models.formats.detect`)
before ``torch.jit.load`` sees it, so a ``torch.save`` pickle renamed ``.pt`` is refused,
never unpickled. The card is the archive's extra file ``gigaseg.card``
(``torch.jit.save(m, f, _extra_files={"gigaseg.card": card.to_json()})``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from models.checkpoint import CheckpointError
from models.formats.detect import TORCHSCRIPT
from models.formats.opened import CARD_KEY, OpenedNetwork


def open_torchscript(path: Path) -> OpenedNetwork:
    """Open ``path`` as a TorchScript archive: its module (on the CPU, eval mode) and card."""
    extra = {CARD_KEY: ""}
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, yet still what many ship
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable TorchScript archive ({first})") from None
    text = extra[CARD_KEY]
    text = text.decode() if isinstance(text, bytes) else text
    return OpenedNetwork(module.eval(), TORCHSCRIPT, card_text=text or None)


def save_torchscript(module: torch.nn.Module, path: Path, card_json: str) -> Path:
    """Save a scripted or traced ``module`` with ``card_json`` as its card."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path), _extra_files={CARD_KEY: card_json})
    return path
