"""Tiny ONNX models written node by node (no exporter): a 1×1 convolution, and one of another input rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def conv1x1_onnx(path: Path, in_channels: int = 3, classes: int = 2, rank: int = 4) -> Path:
    """An ONNX model of one 1×1 convolution (``rank``-D input, batch and spatial axes free)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spatial = ["y", "x", "z"][: rank - 2]
    weight = np.random.default_rng(0).standard_normal((classes, in_channels, *[1] * (rank - 2)))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])],
        "conv1x1",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", in_channels, *spatial])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes, *spatial])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
