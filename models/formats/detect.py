"""Which format a model file is in, from its bytes (not its name), refusing pickles.

- a safetensors checkpoint: an 8-byte header length, then JSON;
- a TorchScript archive: a zip with ``*/code/`` (TorchScript's own program) and ``*/data.pkl``;
- a ``torch.export`` program (``.pt2``): a zip with ``*/archive_format``;
- a ``torch.save`` file: a zip with ``*/data.pkl`` and no code, or a bare pickle —
  refused, since loading it runs arbitrary Python;
- ONNX: a protobuf without a magic number; anything else whose name ends in ``.onnx``
  is given to onnxruntime, which says whether it is one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from models.checkpoint import PICKLE_MAGIC, CheckpointError, pickle_refusal

SAFETENSORS = "safetensors"
ONNX = "onnx"
TORCHSCRIPT = "torchscript"
EXPORTED_PROGRAM = "torch.export"
FORMATS = (SAFETENSORS, ONNX, TORCHSCRIPT, EXPORTED_PROGRAM)
"""The model file formats gigaseg runs."""


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: a damaged zip archive ({exc})") from None
    parts = [name.split("/", 2) for name in names]
    if any(len(p) == 2 and p[1] == "archive_format" for p in parts):
        return EXPORTED_PROGRAM
    if any(len(p) > 2 and p[1] == "code" for p in parts):
        return TORCHSCRIPT
    if any(len(p) == 2 and p[1] == "data.pkl" for p in parts):
        raise pickle_refusal(path)
    raise CheckpointError(f"{path}: a zip archive that is neither a TorchScript nor a torch.export model")


def model_format(path: str | Path) -> str:
    """The format of the model file at ``path`` (one of :data:`FORMATS`).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
    ...     _ = fh.write(b"\\x80\\x04junk")
    >>> try:
    ...     model_format(fh.name)
    ... except CheckpointError as exc:
    ...     print(str(exc).split(": ", 1)[1][:26])
    a PyTorch pickle (torch.sa
    >>> os.unlink(fh.name)
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    if head[8:9] == b"{":
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path)
    if head.startswith(PICKLE_MAGIC):
        raise pickle_refusal(path)
    if (
        path.suffix.lower() == ".onnx" or head[:1] == b"\x08"
    ):  # ONNX's first field: ir_version (tag 1, varint)
        return ONNX
    raise CheckpointError(
        f"{path}: not a model file gigaseg knows "
        "(safetensors checkpoint, ONNX, TorchScript, torch.export .pt2)"
    )
