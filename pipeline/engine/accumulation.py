"""Weighted accumulation: tiles' probabilities in, a blended (classes, *context) region out.

For one region of interest (a block's *context*) every tile of the global grid
that meets it is cut out of the already-read footprint (:mod:`pipeline.engine.tile_batches`),
run through the model in batches under ``torch.inference_mode()``, multiplied by
its blending window and added into a float32 accumulator, in the grid's C order.
Because tile positions, tile contents, padding, weights and the order of
accumulation depend only on the global grid, a block computed alone equals the
same block of a whole-scene pass.

The same code serves the whole-scene in-memory pass (context = scene) used as the
reference, and 2D and 3D alike.

On CPU the per-tile work is done on numpy views of the tensors' memory: a small
torch op costs an OpenMP fork/join, which on a busy machine waits for a time
slice (bench/RESULTS.md); the numpy calls are the same float32 operations, so
the same bits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.engine.predictor import TilePredictor
from pipeline.engine.tile_batches import Footprint, TileBatches
from pipeline.tiling import regions
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.grid import TileGrid
from pipeline.tiling.regions import Region

RowSink = Callable[[int, torch.Tensor, "torch.Tensor | None"], None]
"""``(first row, probabilities (classes, rows, ...), covered (rows, ...) or None: all covered)``: finished
rows of a context, rows counted along the first spatial axis from the context's start."""


def _along(axis: int, ndim: int) -> list[int]:
    """The shape that lays a 1-D profile along ``axis`` of an ``ndim``-D array (broadcast elsewhere)."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


@dataclass
class RegionResult:
    """Blended output over a context region."""

    probabilities: torch.Tensor
    """``(classes, *context)`` float32; undefined where ``covered`` is False."""
    covered: torch.Tensor
    """``(*context)`` bool: valid pixels that received weight."""


def _put(acc: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor) -> None:
    """``acc = probs × weights``, in one pass (numpy on CPU): a part no earlier tile reached."""
    if acc.device.type == "cpu":
        np.multiply(probs.numpy(), weights.numpy(), out=acc.numpy())
    else:
        torch.mul(probs, weights, out=acc)


def _add(acc: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor) -> None:
    """``acc += probs × weights``, the product rounded to float32 first (``probs`` is overwritten)."""
    if acc.device.type == "cpu":
        p, a = probs.numpy(), acc.numpy()
        np.multiply(p, weights.numpy(), out=p)
        np.add(a, p, out=a)
    else:
        acc += probs.mul_(weights)


def _first_touch_split(part: Region, fresh: Sequence[int]) -> tuple[Region, list[Region]]:
    """``part`` cut into the box from ``fresh`` on (no earlier tile reached it) and the slabs before it.

    Slab ``a`` is ``[start, fresh)`` on axis ``a``, the fresh range on the axes before
    it and the whole range on the axes after it: disjoint, and together with the box
    they are ``part``.
    """
    box = tuple((max(a, f), b) for (a, b), f in zip(part, fresh))
    slabs = []
    for axis, ((a, _), f) in enumerate(zip(part, fresh)):
        if f > a:
            slabs.append((*box[:axis], (a, min(f, part[axis][1])), *part[axis + 1 :]))
    return box, slabs


def _shift_rows(acc: torch.Tensor, n: int, keep: int) -> None:
    """Move rows ``[n, n + keep)`` of ``(C, rows, ...)`` to the front, ``n`` rows at a time.

    Pieces of at most ``n`` rows never overlap their destination, so no copy of the
    kept rows is made (moving them in one go would need one). On CPU each class plane
    moves on its own: numpy cannot tell that two row ranges of a ``(C, rows, ...)``
    array are disjoint (their bounds interleave across classes) and would copy the
    source to a temporary first.
    """
    planes = acc.numpy() if acc.device.type == "cpu" else None
    for a in range(0, keep, n):
        b = min(a + n, keep)
        if planes is not None:
            for plane in planes:
                np.copyto(plane[a:b], plane[n + a : n + b])
        else:
            acc[:, a:b].copy_(acc[:, n + a : n + b])


def _batched(items: Iterable[tuple[int, ...]], n: int) -> Iterable[list[tuple[int, ...]]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


class TileWeights:
    """The blending window of each tile: one shared window, or (``crop``) one per tile position."""

    def __init__(self, grid: TileGrid, window: BlendWindow, device: torch.device):
        self.grid = grid
        self.window = window
        self.device = device
        self.shared = None
        if window.mode != "crop":
            self.shared = torch.from_numpy(np.array(window.weights((0,) * grid.ndim))).to(device)
        self.by_position: dict[tuple, torch.Tensor] = {}

    def of(self, idx: tuple[int, ...]) -> torch.Tensor:
        """The ``(*tile)`` window of tile ``idx``."""
        if self.shared is not None:
            return self.shared
        key = self.grid.position_flags(idx)
        if key not in self.by_position:
            weights = np.array(self.window.weights(idx))
            self.by_position[key] = torch.from_numpy(weights).to(self.device)
        return self.by_position[key]


class BlendAccumulator:
    """Σ weight × probability over a context, tile after tile: :meth:`add`, then :meth:`result`.

    The accumulator is allocated once, at the first tile, ``rows_held`` rows deep
    along the first axis. Without a row sink it spans the context. With one, rows
    are streamed: :meth:`release` normalises the rows before a given one, hands
    them to the sink and shifts the rest to the front in place.
    """

    def __init__(
        self,
        context: Region,
        window: BlendWindow,
        valid: np.ndarray,
        device: torch.device,
        rows_held: int,
        on_rows: RowSink | None = None,
    ):
        self.context = context
        self.grid = window.grid
        self.origin = [a for a, _ in context]
        self.shape = regions.shape(context)
        self.valid = valid
        self.device = device
        self.coverage = window.coverage(context)
        self.rows_held = rows_held
        self.on_rows = on_rows
        self.acc: torch.Tensor | None = None
        self.first_row = 0
        """Context row held in the accumulator's row 0."""
        self.first_index = [r.start for r in self.grid.index_range(context)]
        self.ends = [min(a[1], b) for a, b in zip(context, self.grid.shape)]

    def _allocate(self, classes: int) -> torch.Tensor:
        if self.acc is None:
            with torch.inference_mode(False):  # a normal tensor: later steps (CRF) may update it in place
                shape = (classes, self.rows_held, *self.shape[1:])
                if self.device.type == "cpu":  # zero pages from the system: no fill pass
                    self.acc = torch.from_numpy(np.zeros(shape, dtype=np.float32))
                else:
                    self.acc = torch.zeros(shape, dtype=torch.float32, device=self.device)
        return self.acc

    def _fresh_from(self, idx: tuple[int, ...]) -> list[int]:
        """Per axis, where the parts of tile ``idx`` that no earlier tile reached begin.

        Tiles come in C order over :meth:`TileGrid.index_range` of the context, so a
        pixel of this tile was reached before iff, on some axis, it lies before the end
        of the previous tile along that axis (the tile one index back there).
        """
        fresh = []
        for axis, (i, first) in enumerate(zip(idx, self.first_index)):
            start = i * self.grid.stride[axis]
            if i > first:
                start = min((i - 1) * self.grid.stride[axis] + self.grid.tile[axis], self.ends[axis])
            fresh.append(start)
        return fresh

    def add(
        self,
        probs: torch.Tensor,
        batch: Sequence[tuple[int, ...]],
        extents: Sequence[Region],
        weights: TileWeights,
    ) -> None:
        """Add each tile's ``probs`` × its window over its in-scene ``extents`` ∩ the context, in order.

        The part of a tile that no earlier tile reached is written (product, one pass);
        the rest is added to. Every context pixel is written before it is added to, so the
        accumulator needs no zeroing, and the sums have the bits of adding to zeros.
        """
        acc = self._allocate(probs.shape[1])
        for k, (idx, ext) in enumerate(zip(batch, extents)):
            part = regions.intersect(ext, self.context)
            origin = self.grid.origin(idx)
            window = weights.of(idx)
            box, slabs = _first_touch_split(part, self._fresh_from(idx))
            for piece, first in ((box, True), *((slab, False) for slab in slabs)):
                if any(a >= b for a, b in piece):
                    continue
                local = regions.local(piece, origin)
                rows, *across = regions.local(piece, self.origin)
                held = slice(rows.start - self.first_row, rows.stop - self.first_row)
                target = acc[(slice(None), held, *across)]
                (_put if first else _add)(target, probs[(k, slice(None), *local)], window[local])

    def _normalise(self, part: torch.Tensor, start: int) -> torch.Tensor | None:
        """Divide rows from ``start`` by Σw (separable: one 1-D profile per axis); 0 where uncovered.

        Returns the covered mask of these rows, or None when every pixel is covered (the
        common case, which then costs no mask at all).
        """
        stop = start + part.shape[1]
        totals = [profile[start:stop] if axis == 0 else profile for axis, profile in enumerate(self.coverage)]
        valid = self.valid[start:stop]
        if part.device.type != "cpu":
            covered = torch.from_numpy(np.ascontiguousarray(valid)).to(self.device)
            for axis, total in enumerate(totals):
                total = torch.from_numpy(total).to(self.device).reshape(_along(axis, len(self.shape)))
                covered &= total > 0
                part /= torch.where(total > 0, total, torch.ones_like(total))
            if bool(covered.all()):
                return None
            part.mul_(covered)
            return covered
        p = part.numpy()
        positive = []
        for axis, total in enumerate(totals):
            shape = _along(axis, len(self.shape))
            above = total > 0
            np.divide(p, np.where(above, total, np.float32(1)).reshape(shape), out=p)
            positive.append(above.reshape(shape))
        everywhere = all(bool(a.all()) for a in positive) and (
            (valid.size > 0 and not any(valid.strides) and bool(valid.flat[0])) or bool(valid.all())
        )
        if everywhere:
            return None
        covered = np.array(valid, dtype=bool)
        for above in positive:
            covered &= above
        np.multiply(p, covered, out=p)  # 0 where nothing counts, as a per-tile weighted sum would give
        return torch.from_numpy(covered)

    def release(self, upto: int) -> None:
        """Streamed: hand context rows before ``upto`` (no later tile reaches them) to the sink."""
        assert self.on_rows is not None and self.acc is not None
        if upto <= self.first_row:
            return
        n = upto - self.first_row
        finished = self.acc[:, :n]
        self.on_rows(self.first_row, finished, self._normalise(finished, self.first_row))
        keep = max(0, self.acc.shape[1] - n)
        _shift_rows(self.acc, n, keep)
        self.first_row = upto

    def result(self) -> RegionResult:
        """Not streamed: the normalised accumulator over the whole context."""
        assert self.acc is not None, "a context region always meets at least one tile"
        covered = self._normalise(self.acc, 0)
        if covered is None:
            covered = torch.ones(self.acc.shape[1:], dtype=torch.bool, device=self.device)
        return RegionResult(self.acc, covered)


def _rows_held(tiles: Sequence[tuple[int, ...]], grid: TileGrid, context: Region, batch_size: int) -> int:
    """Streamed accumulator depth: from the first unfinished row to the last row the deepest batch reaches.

    Sized once for the deepest batch, the accumulator never grows (a grown copy is
    a second buffer alive at once).
    """
    start, stop = context[0]
    held, first_open = 0, 0
    for batch in _batched(tiles, batch_size):
        first_open = max(first_open, grid.origin(batch[0])[0] - start)
        last = max(min(grid.origin(idx)[0] + grid.tile[0], stop) - start for idx in batch)
        held = max(held, last - first_open)
    return held


def blend_region(
    footprint: Footprint,
    context: Region,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    on_tiles: Callable[[int], None] | None = None,
    on_rows: RowSink | None = None,
) -> RegionResult | None:
    """Blend every tile meeting ``context``; ``footprint`` must contain every tile's in-scene part.

    Per batch (its input and probabilities in two buffers reused by every batch),
    tile after tile in the grid's C order: the probabilities times the tile's window
    written into a float32 accumulator where no earlier tile reached, added where
    one did (:meth:`BlendAccumulator.add`). The total weight is the window's separable
    coverage, and the valid mask is applied per row range at the end (see
    :mod:`pipeline.tiling.blending`): no per-tile weight arrays are made.

    Without ``on_rows`` the accumulator spans the context and is returned. With it,
    rows are *streamed*: tiles come in C order, so once the next tile starts at row
    ``r`` of the first axis no later tile touches the rows before ``r``; those rows
    are normalised, handed to ``on_rows`` and dropped. The accumulator then holds
    only about a tile's height of rows (a 4096² block, tile 512: 1/8 of the block),
    and every pixel still sums the same tiles in the same order: the same bits.
    """
    tiles = list(grid.tiles_meeting(context))
    size = predictor.batch_size
    rows_total = regions.shape(context)[0]
    rows = rows_total if on_rows is None else _rows_held(tiles, grid, context, size)
    valid = footprint.valid[regions.within(context, footprint.region)]
    acc = BlendAccumulator(context, window, valid, predictor.device, rows, on_rows)
    batches = TileBatches(footprint, grid.tile, predictor, len(tiles))
    weights = TileWeights(grid, window, predictor.device)
    scene = regions.whole(grid.shape)
    with torch.inference_mode():  # the batch's probabilities are inference tensors: update them here
        for first in range(0, len(tiles), size):
            batch = tiles[first : first + size]
            extents = [regions.intersect(grid.extent(idx), scene) for idx in batch]
            probs = batches.predict(extents)
            acc.add(probs, batch, extents, weights)
            if on_tiles is not None:
                on_tiles(len(batch))
            if on_rows is not None:
                later = tiles[first + size : first + size + 1]
                acc.release(grid.origin(later[0])[0] - context[0][0] if later else rows_total)
    return None if on_rows is not None else acc.result()
