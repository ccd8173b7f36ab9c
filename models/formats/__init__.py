"""Models made elsewhere: ONNX, TorchScript and ``torch.export`` programs behind the one model interface.

Each format has its own module that opens a file into a bare network (a module
mapping ``(N, C, *size)`` to logits ``(N, classes, *size)``) and hands back the
model card the file carries, if any: :mod:`~models.formats.onnx_model`,
:mod:`~models.formats.torchscript_model`, :mod:`~models.formats.exported_program`.
:mod:`~models.formats.detect` tells the formats apart (and refuses pickles),
:mod:`~models.formats.sidecar` reads and writes the JSON card beside a file,
:mod:`~models.formats.probe` measures the geometry a card does not declare, and
:mod:`~models.formats.loading` puts these together into the same
:class:`~models.wrapper.SegmentationModel` a native checkpoint gives, so the
engine, the Ray actors and the block arithmetic see no difference.
"""

from models.formats.loading import load_model_file

__all__ = ["load_model_file"]
