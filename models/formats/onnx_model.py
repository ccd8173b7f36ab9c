"""ONNX models, run with onnxruntime inside a torch module so the engine sees a network like any other.

The session runs on the CPU provider, or on the CUDA provider first when the
tiles are on a CUDA device and ``onnxruntime.get_available_providers()`` lists it
(the ``onnxruntime-gpu`` package). The card lives in the model's ``metadata_props``
under ``gigaseg.card``. Tiles go in as float32 numpy (a channels-last batch is made
contiguous first) and the logits come back as a tensor on the tiles' device.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError
from models.formats.detect import ONNX
from models.formats.opened import CARD_KEY, OpenedNetwork

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime providers for tiles on ``device``: CUDA first where it is there and asked for.

    >>> providers_for(torch.device("cpu"))
    ['CPUExecutionProvider']
    """
    import onnxruntime as ort

    if device.type == "cuda" and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) else None


class OnnxNetwork(nn.Module):
    """An ONNX model as a torch module: ``forward`` runs one onnxruntime session call.

    It has no parameters; the session for a device type is made at the first batch
    on it, from the file (so weights kept as external data beside it load too), with
    as many threads as torch is allowed (an actor's share of the machine).
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self._sessions: dict[str, object] = {}
        first = self.session(torch.device("cpu"))
        self.input_name = first.get_inputs()[0].name

    def session(self, device: torch.device):  # -> onnxruntime.InferenceSession
        """The session for tiles on ``device`` (made once)."""
        import onnxruntime as ort

        if device.type not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, torch.get_num_threads())
            options.log_severity_level = 4  # refusals are raised, not printed
            try:
                self._sessions[device.type] = ort.InferenceSession(
                    str(self.path), sess_options=options, providers=providers_for(device)
                )
            except Exception as exc:  # onnxruntime raises its own, unexported exception types
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if "protobuf" in first.lower():  # onnxruntime's wording changes between releases
                    first = "not an ONNX protobuf"
                raise CheckpointError(f"{self.path}: not a readable ONNX model ({first})") from None
        return self._sessions[device.type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session(x.device).run(None, {self.input_name: array})[:1]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(x.device)


def open_onnx(path: Path) -> OpenedNetwork:
    """Open ``path`` as an ONNX model: its network, card and declared input/output shapes."""
    net = OnnxNetwork(path)
    session = net.session(torch.device("cpu"))
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise CheckpointError(
            f"{path}: an ONNX model with {len(inputs)} inputs ({names}); gigaseg feeds one image"
        )
    shape = list(inputs[0].shape or [])
    if len(shape) not in (4, 5):
        raise CheckpointError(
            f"{path}: ONNX input {inputs[0].name!r} has rank {len(shape)} ({shape}); gigaseg feeds "
            "(N, C, Y, X) or (N, C, Z, Y, X) tiles"
        )
    if inputs[0].type != "tensor(float)":
        raise CheckpointError(
            f"{path}: ONNX input {inputs[0].name!r} is {inputs[0].type}; gigaseg feeds float32"
        )
    out_shape = list(outputs[0].shape or [])
    meta = session.get_modelmeta().custom_metadata_map or {}
    return OpenedNetwork(
        net,
        ONNX,
        card_text=meta.get(CARD_KEY),
        input_rank=len(shape),
        in_channels=_static(shape[1]),
        num_classes=_static(out_shape[1]) if len(out_shape) > 1 else None,
    )


def embed_card(path: Path, card_json: str) -> None:
    """Write ``card_json`` into the ONNX model's ``metadata_props`` (replacing a card already there).

    The file is rewritten under a temporary name and renamed, so a reader never sees half of it.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise CheckpointError(f"{path}: not a readable ONNX model ({exc})") from None
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=CARD_KEY, value=card_json)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
