"""Block finishing: blended probabilities → labels (nodata marked), label statistics, uncertainty."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.engine.accumulation import RegionResult
from pipeline.stores.block_output import BlockOutput
from pipeline.stores.labels import label_dtype, label_nodata
from pipeline.tiling import regions
from pipeline.tiling.regions import Region


def _top_class(probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and its class (the first on ties, as argmax) over axis 0, as numpy arrays.

    Many classes: ``torch.max`` over dim 0, which on CPU is many times faster than
    ``argmax``. Few classes on a GPU: a running maximum, uint8 labels and no int64
    index array (on CPU, :class:`_SlabScratch` does the same in reused buffers).
    """
    if probs.shape[0] > 16:
        top, winner = torch.max(probs, dim=0)
        return top.cpu().numpy(), winner.cpu().numpy()
    top = probs[0].clone()
    winner = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[0]):
        winner.masked_fill_(probs[c] > top, c)
        torch.maximum(top, probs[c], out=top)
    return top.cpu().numpy(), winner.cpu().numpy()


class _SlabScratch:
    """The temporaries of one slab (top probability, masks), allocated once per block and reused.

    On CPU with few classes the labels are written straight into the block's label
    slab and the top probability kept by a running maximum, in numpy (single-threaded,
    as the blending: small torch ops wait for OpenMP threads on a busy machine).
    Reusing the buffers keeps a block's slabs from churning the heap between batches.
    """

    def __init__(self, pixels: int):
        self.top = np.empty(pixels, np.float32)
        self.masked = np.empty(pixels, np.float32)
        self.better = np.empty(pixels, bool)

    def _of(self, buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return buffer[: int(np.prod(shape))].reshape(shape)

    def top_class_into(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``labels`` ← the top class of ``probs`` (first on ties); returns the top probability (a view)."""
        top = self._of(self.top, probs.shape[1:])
        better = self._of(self.better, probs.shape[1:])
        np.copyto(top, probs[0])
        if probs.shape[0] == 1:
            labels.fill(0)
        for c in range(1, probs.shape[0]):
            np.greater(probs[c], top, out=better)
            if c == 1:
                np.copyto(labels, better, casting="unsafe")  # class 1 where it beats class 0, else 0
            else:
                np.putmask(labels, better, c)
            np.maximum(top, probs[c], out=top)
        return top

    def add_label_stats(self, stats: np.ndarray, labels: np.ndarray, top: np.ndarray) -> None:
        """Few classes: add pixels per label and the sum of their top probability to ``stats``.

        A comparison and a masked float32 (pairwise) sum per class over the slab, accumulated
        across slabs in float64: many times faster than a float64 ``where=`` reduction.
        """
        labels, top = labels.ravel(), top.ravel()
        mask, masked = self.better[: labels.size], self.masked[: labels.size]
        for c in range(stats.shape[0]):
            np.equal(labels, c, out=mask)
            stats[c, 0] += np.count_nonzero(mask)
            np.multiply(top, mask, out=masked)
            stats[c, 1] += float(masked.sum())


SLAB_PIXELS = 1 << 20
"""Pixels per slab when a block is finished slab by slab (first spatial axis): cache-sized temporaries."""


def _bincount_stats(stats: np.ndarray, labels: np.ndarray, top: np.ndarray) -> None:
    """Many classes: add pixels per label and the sum of their top probability to ``stats``."""
    num_classes = stats.shape[0]
    labels, top = labels.ravel(), top.ravel()
    stats[:, 0] += np.bincount(labels, minlength=num_classes)[:num_classes]
    stats[:, 1] += np.bincount(labels, weights=top, minlength=num_classes)[:num_classes]


class BlockFinisher:
    """Turns a block's blended probabilities into its outputs, a range of rows at a time.

    Rows (along the first spatial axis) may come all at once (:func:`finish_block`)
    or as they are finished (the streaming blend); each range is done in ~1 Mpx
    slabs, so the temporaries (top probability, masks) stay small whatever the block.
    """

    def __init__(
        self, shape: Sequence[int], num_classes: int, with_probabilities: bool, with_uncertainty: bool
    ):
        self.num_classes = num_classes
        self.labels = np.empty(tuple(shape), dtype=label_dtype(num_classes))
        self.stats = np.zeros((num_classes, 2), dtype=np.float64)
        self.probabilities = np.empty((num_classes, *shape), np.float32) if with_probabilities else None
        self.confidence = np.empty(tuple(shape), np.float32) if with_uncertainty else None
        self.entropy = np.empty(tuple(shape), np.float32) if with_uncertainty else None
        self.scratch: _SlabScratch | None = None

    def add(self, start: int, probs: torch.Tensor, covered: torch.Tensor | None) -> None:
        """Rows ``[start, start + probs.shape[1])`` of the block: ``(classes, rows, ...)`` and their mask.

        ``covered`` None: every pixel of these rows is covered.
        """
        covered_np = None if covered is None else covered.cpu().numpy()
        everywhere = covered_np is None or bool(covered_np.all())
        rows_here = probs.shape[1]
        across = int(np.prod(probs.shape[2:]))
        step = max(1, SLAB_PIXELS // max(1, across))
        scratch = self.scratch
        if scratch is None and self.num_classes <= 16:  # few classes: per-class masks in reused buffers
            scratch = self.scratch = _SlabScratch(step * across)
        for first in range(0, rows_here, step):
            rows = slice(first, first + step)
            slab = self.labels[start + first : start + min(first + step, rows_here)]
            keep = None if everywhere or covered_np is None else covered_np[rows]
            if scratch is not None and probs.device.type == "cpu":
                top = scratch.top_class_into(probs[:, rows].numpy(), slab)
            else:
                top, winner = _top_class(probs[:, rows])
                slab[...] = winner
            counted, counted_top = slab, top
            if keep is not None:
                slab[~keep] = label_nodata(self.num_classes)
                counted, counted_top = slab[keep], top[keep]
            if scratch is not None:
                scratch.add_label_stats(self.stats, counted, counted_top)
            else:
                _bincount_stats(self.stats, counted, counted_top)
        out = slice(start, start + rows_here)
        if self.probabilities is not None:
            part = self.probabilities[:, out]
            part[...] = probs.cpu().numpy()
            if not everywhere:
                part[:, ~covered_np] = np.nan
        if self.confidence is not None and self.entropy is not None:
            p = probs.float()
            confidence = self.confidence[out]
            entropy = self.entropy[out]
            confidence[...] = p.amax(dim=0).cpu().numpy()
            entropy[...] = (-(p * torch.log(p.clamp_min(1e-12))).sum(dim=0)).cpu().numpy()
            if not everywhere:
                confidence[~covered_np] = np.nan
                entropy[~covered_np] = np.nan

    def output(self) -> BlockOutput:
        """The finished block."""
        return BlockOutput(self.labels, self.probabilities, self.confidence, self.entropy, self.stats)


def finish_block(
    result: RegionResult,
    context: Region,
    region: Region,
    num_classes: int,
    with_probabilities: bool,
    with_uncertainty: bool = False,
) -> BlockOutput:
    """Crop a context result to the block, take the top class, mark nodata (optionally confidence/entropy)."""
    sl = regions.within(region, context)
    probs = result.probabilities[(slice(None), *sl)]
    finisher = BlockFinisher(probs.shape[1:], num_classes, with_probabilities, with_uncertainty)
    finisher.add(0, probs, result.covered[sl])
    return finisher.output()
