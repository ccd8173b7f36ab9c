"""Writing the card of a model made elsewhere: checked against the network, then embedded or beside it.

``gigaseg model-card`` lands here. The card is completed the way loading would
complete it (channels from the network, geometry declared or measured) and the
network is run once against it, so a card that contradicts its model is refused
before it is written. ONNX files take it into their ``metadata_props`` when asked
(``embed``); everything else gets the JSON sidecar.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.checkpoint import CheckpointError, ModelCard
from models.formats.detect import ONNX
from models.formats.loading import assemble, open_model_file
from models.formats.onnx_model import embed_card
from models.formats.sidecar import write_sidecar


def write_card(
    path: str | os.PathLike[str], class_names: list[str], embed: bool = False, **fields: Any
) -> tuple[ModelCard, Path]:
    """Card ``class_names`` + ``fields`` (bands, colours, normalisation, tile, gsd, geometry …) for
    the model at ``path``, checked against it; written into an ONNX file (``embed``) or as the sidecar.

    Returns the complete card (with the geometry it now declares) and where it was written.
    """
    path = Path(path)
    opened = open_model_file(path)
    draft = ModelCard(arch=opened.format, config={}, class_names=list(class_names), **fields)
    _, card = assemble(path, opened, draft)
    card = replace(card, config={k: card.config[k] for k in ("in_channels", "num_classes")})
    if embed:
        if opened.format != ONNX:
            raise CheckpointError(f"{path}: only ONNX files take an embedded card here; drop --embed")
        embed_card(path, card.to_json())
        return card, path
    return card, write_sidecar(path, card)
