"""The tile predictor: a model run over batches of tiles (device, AMP, channels-last, flip TTA)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import torch

from models import SegmentationModel
from pipeline.engine.device import MEMORY_BUDGET, autocast_dtype, fit_batch_size, free_memory


def channels_last_format(model: torch.nn.Module) -> torch.memory_format | None:
    """The channels-last layout for the model's tiles (2D or 3D), or None if it has no spatial rank."""
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(getattr(model, "spatial_dims", None))


class TilePredictor:
    """Runs a model over batches of tiles: device transfer, AMP, softmax in float32.

    With ``channels_last`` (the default) the model's weights and every batch are
    laid out channels-last (NHWC / NDHWC), the layout oneDNN and cuDNN convolutions
    run fastest in: 1.1–3.4× faster forwards on CPU for the registered networks
    (bench/RESULTS.md). The same numbers up to float rounding (~1e-7), and a rerun
    gives the same bits. Like ``.to()``, it converts the given model in place.
    """

    def __init__(
        self,
        model: SegmentationModel,
        device: torch.device,
        batch_size: int = 8,
        amp: bool = False,
        tta: bool = False,
        channels_last: bool = True,
    ):
        self.memory_format = channels_last_format(model) if channels_last else None
        model = model.to(device)
        if self.memory_format is not None:
            model = model.to(memory_format=self.memory_format)
        self.model = model.eval()
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.amp_dtype = autocast_dtype(device) if amp else None
        self.tta = tta
        self.tiles_run = 0

    def fit_to_memory(self, tile_shape: Sequence[int], share: float = 1.0) -> int:
        """On CUDA, cap the batch so a batch's activations fit the free memory; returns the batch.

        Peak memory of one ``(1, *tile_shape)`` forward pass is measured, so the cap
        follows the real model and AMP setting. ``share``: the part of the GPU this
        process holds (several actors on one GPU each fit their batch to their part).
        A no-op on CPU.
        """
        free = free_memory(self.device)
        if free is None:
            return self.batch_size
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self(torch.zeros((1, *tile_shape), device=self.device))
        self.tiles_run -= 1
        per_tile = torch.cuda.max_memory_allocated(self.device) - base
        self.batch_size = fit_batch_size(self.batch_size, per_tile, free, budget=MEMORY_BUDGET * share)
        return self.batch_size

    def __call__(self, tiles: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, *tile)`` normalised input → ``(N, classes, *tile)`` probabilities (float32).

        ``out``, a contiguous float32 ``(N, classes, *tile)`` tensor on the device, receives
        them and is returned: a caller running batch after batch reuses one buffer instead
        of allocating a fresh one per batch (and a channels-last copy of it), which on CPU
        leaves freed holes in the heap that a block's peak memory carries.
        """
        ctx = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), ctx:
            if self.memory_format is not None:
                tiles = tiles.contiguous(memory_format=self.memory_format)
            if not self.tta:
                probs = torch.softmax(self.model(tiles).float(), dim=1, out=out)
            else:
                probs = self._mirrored_mean(tiles)
                probs = probs if out is None else out.copy_(probs)
            probs = probs.contiguous()  # blending cuts and adds per class plane
        self.tiles_run += tiles.shape[0]
        return probs

    def _mirrored_mean(self, tiles: torch.Tensor) -> torch.Tensor:
        """Flip test-time augmentation: mean softmax over every mirror of the spatial axes (2^D passes)."""
        spatial = tuple(a for a in range(2, tiles.ndim) if tiles.shape[a] > 1)  # flipping 1 voxel is a no-op
        total: torch.Tensor | None = None
        flips = [
            tuple(a for a, on in zip(spatial, mask) if on)
            for mask in itertools.product((0, 1), repeat=len(spatial))
        ]
        for axes in flips:
            x = tiles.flip(axes) if axes else tiles
            p = torch.softmax(self.model(x).float(), dim=1)
            p = p.flip(axes) if axes else p
            total = p if total is None else total + p
        assert total is not None
        return total / len(flips)
