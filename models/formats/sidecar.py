"""The model card as JSON beside a model file: ``model.onnx`` → ``model.card.json``.

A sidecar is how a card travels with a file whose format has no place for one,
and how a user describes a model made elsewhere without touching the file. It
wins over a card embedded in the file. A hand-written sidecar may leave out
``arch`` and ``config``: the format's name and the network's channel counts fill them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.checkpoint import FORMAT_VERSION, CheckpointError, ModelCard

SUFFIX = ".card.json"


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the sidecar card of ``model_path`` lives.

    >>> sidecar_path("/models/roads.onnx").as_posix()
    '/models/roads.card.json'
    """
    return Path(model_path).with_suffix(SUFFIX)


def parse_card(text: str, source: str | os.PathLike[str], arch: str) -> ModelCard:
    """A card from its JSON (a full card or a partial, hand-written one); ``source`` names it in errors."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data.pop("format", None)
        data.setdefault("arch", arch)
        data.setdefault("config", {})
        if "class_names" not in data:
            raise ValueError("no class_names")
        return ModelCard(**data)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: unreadable model card ({exc})") from None


def write_sidecar(model_path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``card`` beside ``model_path`` (temporary name, then rename); returns the sidecar's path."""
    path = sidecar_path(model_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"format": FORMAT_VERSION, **json.loads(card.to_json())}, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
