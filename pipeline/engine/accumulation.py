"""The block inference engine: footprint in, blended (and refined) block out.

For one region of interest (a block's *context*) the engine cuts every tile of
the global grid that meets it out of the already-read footprint, pads tiles that
run past the scene edge (reflecting the tile's own pixels), runs the model in
batches under ``torch.inference_mode()``, and accumulates ``weight × softmax``
and ``weight`` in float32, in the grid's C order. Because tile positions, tile
contents, padding, weights and the order of accumulation depend only on the
global grid, a block computed alone equals the same block of a whole-scene pass.

The same function serves the whole-scene in-memory pass (context = scene) used
as the reference, and 2D and 3D alike.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models import SegmentationModel
from pipeline.engine.device import autocast_dtype, fit_batch_size, free_memory
from pipeline.tiling.blending import BlendWindow
from pipeline.tiling.blocks import Block
from pipeline.tiling.grid import Region, TileGrid

Refiner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(probs (C, *ctx), image (B, *ctx), valid (*ctx)) → refined probs: the CRF hook."""


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 255 classes (255 is nodata), uint16 beyond."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def label_nodata(num_classes: int) -> int:
    """The label written where there is no data: the dtype's maximum."""
    return int(np.iinfo(label_dtype(num_classes)).max)


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

    def fit_to_memory(self, tile_shape: Sequence[int]) -> int:
        """On CUDA, cap the batch so a batch's activations fit the free memory; returns the batch.

        Peak memory of one ``(1, *tile_shape)`` forward pass is measured, so the cap
        follows the real model and AMP setting. A no-op on CPU.
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
        self.batch_size = fit_batch_size(self.batch_size, per_tile, free)
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


@dataclass
class RegionResult:
    """Blended output over a context region."""

    probabilities: torch.Tensor
    """``(classes, *context)`` float32; undefined where ``covered`` is False."""
    covered: torch.Tensor
    """``(*context)`` bool: valid pixels that received weight."""


def _pad_tile(x: torch.Tensor, tile: Sequence[int]) -> torch.Tensor:
    """Pad the far side of a ``(C, *size)`` tile up to ``tile`` (reflect, or replicate if too small)."""
    size = x.shape[1:]
    pads: list[int] = []
    for have, want in zip(reversed(size), reversed(tile)):
        pads.extend([0, want - have])
    if not any(pads):
        return x
    reflect = all(p < h for p, h in zip(pads[1::2], reversed(size)))
    # F.pad's reflect/replicate need a batch axis for N-D inputs.
    return F.pad(x.unsqueeze(0), pads, mode="reflect" if reflect else "replicate").squeeze(0)


def _local(region: Region, origin: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a - o, b - o) for (a, b), o in zip(region, origin))


def _intersect(a: Region, b: Region) -> Region:
    return tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))


def _all_true(mask: np.ndarray) -> bool:
    """``mask.all()``, at once for a broadcast constant (a scene without nodata reads as one)."""
    if mask.size and not any(mask.strides):
        return bool(mask.flat[0])
    return bool(mask.all())


def _shift_rows(acc: torch.Tensor, n: int, keep: int) -> None:
    """Move rows ``[n, n + keep)`` of ``(C, rows, ...)`` to the front, ``n`` rows at a time.

    Pieces of at most ``n`` rows never overlap their destination, so no copy of the
    kept rows is made (moving them in one go would need one).
    """
    for a in range(0, keep, n):
        b = min(a + n, keep)
        if acc.device.type == "cpu":
            np.copyto(acc[:, a:b].numpy(), acc[:, n + a : n + b].numpy())
        else:
            acc[:, a:b].copy_(acc[:, n + a : n + b])


def _batched(items: Iterable[tuple[int, ...]], n: int) -> Iterable[list[tuple[int, ...]]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _cut_tiles(
    raw: np.ndarray,
    valid: np.ndarray | None,
    normalizer: Callable[[np.ndarray], np.ndarray],
    extents: Sequence[Region],
    origin: Sequence[int],
    tile: Sequence[int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, C, *tile)`` float32: each tile's in-scene part normalised, nodata zeroed, edges padded.

    Normalisation is pointwise with fixed parameters, so normalising a tile gives
    the same bits as normalising the whole footprint and cutting; doing it per
    tile keeps only the raw footprint (1 byte/px for 8-bit imagery) in memory
    instead of a float32 copy of it. ``valid`` is None when every pixel is valid.
    """
    shape = (len(extents), raw.shape[0], *tile)
    batch = np.empty(shape, dtype=np.float32) if out is None else out[: len(extents)]
    for k, ext in enumerate(extents):
        sl = _local(ext, origin)
        x = normalizer(raw[(slice(None), *sl)])
        if valid is not None:
            x[:, ~valid[sl]] = 0.0  # nodata never reaches the network
        if x.shape[1:] == tuple(tile):
            batch[k] = x
        else:
            batch[k] = _pad_tile(torch.from_numpy(x), tile).numpy()
    return batch


RowSink = Callable[[int, torch.Tensor, torch.Tensor], None]
"""``(first row, probabilities (classes, rows, ...), covered (rows, ...))``: finished rows of a context,
rows counted along the first spatial axis from the context's start."""


def blend_region(
    raw: np.ndarray,
    valid: np.ndarray,
    normalizer: Callable[[np.ndarray], np.ndarray],
    footprint: Region,
    context: Region,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    on_tiles: Callable[[int], None] | None = None,
    on_rows: RowSink | None = None,
) -> RegionResult | None:
    """Blend every tile meeting ``context``.

    ``raw`` ``(C, *footprint)`` is the input as read, ``valid`` ``(*footprint)`` its
    mask, ``normalizer`` the model's input normalisation (applied per tile, nodata
    then set to 0); ``footprint`` must contain every tile's in-scene part
    (``grid.footprint(context)`` does).

    Per batch (its input and probabilities in two buffers reused by every batch):
    one in-place multiply by the window (one window for the whole batch unless
    blending is ``crop``), then one in-place add per tile into a float32
    accumulator, in the grid's C order. The total weight is the window's separable
    coverage, and the valid mask is applied per row range at the end (see
    :mod:`pipeline.tiling.blending`): no per-tile weight arrays are made.

    Without ``on_rows`` the accumulator spans the context and is returned. With it,
    rows are *streamed*: tiles come in C order, so once the next tile starts at row
    ``r`` of the first axis no later tile touches the rows before ``r``; those rows
    are normalised, handed to ``on_rows`` and dropped. The accumulator then holds
    only about a tile's height of rows (a 4096² block, tile 512: 1/8 of the block),
    and every pixel still sums the same tiles in the same order: the same bits.
    """
    device = predictor.device
    origin = [a for a, _ in footprint]
    ctx_origin = [a for a, _ in context]
    ctx_shape = [b - a for a, b in context]
    scene = tuple((0, s) for s in grid.shape)
    tiles = list(grid.tiles_meeting(context))
    shared = None if window.mode == "crop" else torch.from_numpy(np.array(window.weights((0,) * grid.ndim)))
    shared = shared.to(device) if shared is not None else None
    weight_cache: dict[tuple, torch.Tensor] = {}
    coverage = [torch.from_numpy(p).to(device) for p in window.coverage(context)]
    valid_ctx = valid[_local(context, origin)]

    # On CPU the per-tile work is done on numpy views of the same memory: a small torch op costs an
    # OpenMP fork/join, which on a busy machine waits for a time slice (measured 6–15 ms per tile
    # with 2 threads on a loaded 2-core machine vs 0.5 ms single-threaded); the results are the same
    # float32 operations, so the same bits.
    on_cpu = device.type == "cpu"
    shared_np = shared.numpy() if on_cpu and shared is not None else None
    buf: torch.Tensor | None = None  # rows [lo, lo + len(buf)) of the context, along axis 0
    lo = 0
    some_invalid = None if _all_true(valid) else valid

    def row_stop(idx: tuple[int, ...]) -> int:
        return min(grid.origin(idx)[0] + grid.tile[0], context[0][1]) - ctx_origin[0]

    # Streamed, the accumulator holds the rows from the first unfinished one to the last the current
    # batch reaches: sized once for the deepest batch, so it never grows (a grown copy is a second
    # buffer alive at once).
    rows_held = ctx_shape[0]
    if on_rows is not None:
        rows_held, first_open = 0, 0
        for batch_idx in _batched(tiles, predictor.batch_size):
            first_open = max(first_open, grid.origin(batch_idx[0])[0] - ctx_origin[0])
            rows_held = max(rows_held, max(row_stop(idx) for idx in batch_idx) - first_open)

    def ensure(classes: int) -> torch.Tensor:
        nonlocal buf
        if buf is None:
            with torch.inference_mode(False):  # a normal tensor: later steps (CRF) may update it in place
                buf = torch.zeros((classes, rows_held, *ctx_shape[1:]), dtype=torch.float32, device=device)
        return buf

    def normalise(part: torch.Tensor, start: int) -> torch.Tensor:
        """Divide rows from ``start`` by Σw (separable: one 1-D profile per axis); 0 where uncovered."""
        stop = start + part.shape[1]
        covered = torch.from_numpy(valid_ctx[start:stop].copy()).to(device)
        for axis, profile in enumerate(coverage):
            total = profile[start:stop] if axis == 0 else profile
            shape = [1] * len(ctx_shape)
            shape[axis] = -1
            total = total.reshape(shape)
            covered &= total > 0
            part /= torch.where(total > 0, total, torch.ones_like(total))
        if not bool(covered.all()):
            part.mul_(covered)  # 0 where nothing counts, as a per-tile weighted sum would give
        return covered

    # One input and one probability buffer for every batch of the region (the first full batch's
    # probabilities become the latter), so batches do not churn the heap.
    cut_buf = np.empty((min(len(tiles), predictor.batch_size), raw.shape[0], *grid.tile), dtype=np.float32)
    probs_buf: torch.Tensor | None = None

    with torch.inference_mode():  # the batch's probabilities are inference tensors: update them here
        for first in range(0, len(tiles), predictor.batch_size):
            batch = tiles[first : first + predictor.batch_size]
            extents = [_intersect(grid.extent(idx), scene) for idx in batch]
            cut = _cut_tiles(raw, some_invalid, normalizer, extents, origin, grid.tile, cut_buf)
            x = torch.from_numpy(cut)
            if device.type == "cuda":
                x = x.pin_memory()  # the caching host allocator keeps it alive until copied
            out = None if probs_buf is None else probs_buf[: len(batch)]
            probs = predictor(x.to(device, non_blocking=True), out=out)
            if probs_buf is None and len(batch) == len(cut_buf):
                probs_buf = probs
            acc = ensure(probs.shape[1])
            acc_np = acc.numpy() if on_cpu else None
            probs_np = probs.numpy() if on_cpu else None
            if shared_np is not None:
                np.multiply(probs_np, shared_np, out=probs_np)
            elif shared is not None:
                probs.mul_(shared)
            for k, (idx, ext) in enumerate(zip(batch, extents)):
                if shared is None:
                    key = grid.position_flags(idx)
                    if key not in weight_cache:
                        weight_cache[key] = torch.from_numpy(np.array(window.weights(idx))).to(device)
                    if on_cpu:
                        np.multiply(probs_np[k], weight_cache[key].numpy(), out=probs_np[k])
                    else:
                        probs[k].mul_(weight_cache[key])
                part = _intersect(ext, context)
                tile_sl = (k, slice(None), *_local(part, grid.origin(idx)))
                local = _local(part, ctx_origin)
                acc_sl = (slice(None), slice(local[0].start - lo, local[0].stop - lo), *local[1:])
                if on_cpu:
                    view = acc_np[acc_sl]
                    np.add(view, probs_np[tile_sl], out=view)
                else:
                    acc[acc_sl] += probs[tile_sl]
            if on_tiles is not None:
                on_tiles(len(batch))
            if on_rows is None:
                continue
            done = first + len(batch) >= len(tiles)
            next_row = ctx_shape[0] if done else grid.origin(tiles[first + len(batch)])[0] - ctx_origin[0]
            upto = max(lo, next_row)
            if upto > lo:
                n = upto - lo
                finished = acc[:, :n]
                on_rows(lo, finished, normalise(finished, lo))
                keep = max(0, acc.shape[1] - n)
                _shift_rows(acc, n, keep)
                acc[:, keep:] = 0.0
                lo = upto

    if on_rows is not None:
        return None
    assert buf is not None, "a context region always meets at least one tile"
    return RegionResult(buf, normalise(buf, 0))


@dataclass
class BlockOutput:
    """What a block writes: labels and (optionally) probabilities of its own region.

    ``confidence`` (top-class probability) and ``entropy`` (nats) are per-pixel
    uncertainty maps, kept when region metrics are wanted (NaN where nodata).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    confidence: np.ndarray | None = None
    entropy: np.ndarray | None = None
    label_stats: np.ndarray | None = None
    """``(classes, 2)`` float64: voxels per label and the sum of their winning probability."""


def _top_class(probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and its class (the first on ties, as argmax) over axis 0, as numpy arrays.

    Few classes: a running maximum, uint8 labels and no int64 index array; on CPU
    in numpy (single-threaded, as the blending: small torch ops wait for OpenMP
    threads on a busy machine). Else ``torch.max`` over dim 0, which on CPU is many
    times faster than ``argmax``.
    """
    if probs.shape[0] > 16:
        top, winner = torch.max(probs, dim=0)
        return top.cpu().numpy(), winner.cpu().numpy()
    if probs.device.type != "cpu":
        top = probs[0].clone()
        winner = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
        for c in range(1, probs.shape[0]):
            winner.masked_fill_(probs[c] > top, c)
            torch.maximum(top, probs[c], out=top)
        return top.cpu().numpy(), winner.cpu().numpy()
    p = probs.numpy()
    top = p[0].copy()
    winner = np.zeros(p.shape[1:], dtype=np.uint8)
    better = np.empty(p.shape[1:], dtype=bool)
    for c in range(1, p.shape[0]):
        np.greater(p[c], top, out=better)
        np.putmask(winner, better, c)
        np.maximum(top, p[c], out=top)
    return top, winner


SLAB_PIXELS = 1 << 20
"""Pixels per slab when a block is finished slab by slab (first spatial axis): cache-sized temporaries."""


def _add_label_stats(stats: np.ndarray, labels: np.ndarray, top: np.ndarray, keep: np.ndarray | None) -> None:
    """Add pixels per label and the sum of their top probability (where ``keep``) to ``stats``."""
    num_classes = stats.shape[0]
    if keep is not None:
        labels, top = labels[keep], top[keep]
    labels, top = labels.ravel(), top.ravel()
    if num_classes > 16:
        stats[:, 0] += np.bincount(labels, minlength=num_classes)[:num_classes]
        stats[:, 1] += np.bincount(labels, weights=top, minlength=num_classes)[:num_classes]
        return
    # Few classes: a comparison and a masked float32 (pairwise) sum per class over a cache-sized slab,
    # accumulated across slabs in float64 — ~14× faster than a float64 ``where=`` reduction.
    masked = np.empty_like(top)
    for c in range(num_classes):
        mask = labels == c
        stats[c, 0] += np.count_nonzero(mask)
        np.multiply(top, mask, out=masked)
        stats[c, 1] += float(masked.sum())


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

    def add(self, start: int, probs: torch.Tensor, covered: torch.Tensor) -> None:
        """Rows ``[start, start + probs.shape[1])`` of the block: ``(classes, rows, ...)`` and their mask."""
        covered_np = covered.cpu().numpy()
        everywhere = bool(covered_np.all())
        rows_here = probs.shape[1]
        step = max(1, SLAB_PIXELS // max(1, int(np.prod(probs.shape[2:]))))
        for first in range(0, rows_here, step):
            rows = slice(first, first + step)
            top, winner = _top_class(probs[:, rows])
            slab = self.labels[start + first : start + min(first + step, rows_here)]
            slab[...] = winner
            keep = None if everywhere else covered_np[rows]
            if keep is not None:
                slab[~keep] = label_nodata(self.num_classes)
            _add_label_stats(self.stats, slab, top, keep)
        out = slice(start, start + rows_here)
        if self.probabilities is not None:
            part = self.probabilities[:, out]
            part[...] = probs.cpu().numpy()
            part[:, ~covered_np] = np.nan
        if self.confidence is not None and self.entropy is not None:
            p = probs.float()
            confidence = self.confidence[out]
            entropy = self.entropy[out]
            confidence[...] = p.amax(dim=0).cpu().numpy()
            entropy[...] = (-(p * torch.log(p.clamp_min(1e-12))).sum(dim=0)).cpu().numpy()
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
    sl = _local(region, [a for a, _ in context])
    probs = result.probabilities[(slice(None), *sl)]
    finisher = BlockFinisher(probs.shape[1:], num_classes, with_probabilities, with_uncertainty)
    finisher.add(0, probs, result.covered[sl])
    return finisher.output()


def infer_context(
    raw: np.ndarray,
    valid: np.ndarray,
    normalizer: Callable[[np.ndarray], np.ndarray],
    footprint: Region,
    context: Region,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    refiner: Refiner | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> RegionResult:
    """Blend (and optionally refine) over ``context`` from the raw footprint."""
    result = blend_region(raw, valid, normalizer, footprint, context, grid, window, predictor, on_tiles)
    if refiner is not None:
        sl = _local(context, [a for a, _ in footprint])
        feats = torch.from_numpy(np.ascontiguousarray(raw[(slice(None), *sl)])).to(predictor.device)
        refined = refiner(result.probabilities, feats.float(), result.covered)
        result = RegionResult(refined, result.covered)
    return result


def infer_block(
    read: Callable[[Region], tuple[np.ndarray, np.ndarray]],
    block: Block,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    normalizer: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
    with_probabilities: bool = False,
    refiner: Refiner | None = None,
    on_tiles: Callable[[int], None] | None = None,
    with_uncertainty: bool = False,
) -> BlockOutput:
    """Compute one output block: read its footprint, blend, refine, crop.

    Without a refiner the blend is streamed (rows finished as the tiles pass, see
    :func:`blend_region`); the CRF needs the whole context's probabilities at once.
    """
    raw, valid = read(block.footprint)
    if refiner is not None:
        result = infer_context(
            raw, valid, normalizer, block.footprint, block.context, grid, window, predictor, refiner, on_tiles
        )
        return finish_block(
            result, block.context, block.region, num_classes, with_probabilities, with_uncertainty
        )
    sl = _local(block.region, [a for a, _ in block.context])
    first, last = sl[0].start, sl[0].stop
    finisher = BlockFinisher(
        [s.stop - s.start for s in sl], num_classes, with_probabilities, with_uncertainty
    )

    def on_rows(start: int, probs: torch.Tensor, covered: torch.Tensor) -> None:
        a, b = max(start, first), min(start + probs.shape[1], last)
        if a < b:
            rows = slice(a - start, b - start)
            finisher.add(a - first, probs[(slice(None), rows, *sl[1:])], covered[(rows, *sl[1:])])

    blend_region(
        raw, valid, normalizer, block.footprint, block.context, grid, window, predictor, on_tiles, on_rows
    )
    return finisher.output()


def predict_in_memory(
    raw: np.ndarray,
    valid: np.ndarray,
    grid: TileGrid,
    window: BlendWindow,
    predictor: TilePredictor,
    normalizer: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
    refiner: Refiner | None = None,
) -> BlockOutput:
    """The whole scene in one piece (the reference the blockwise run must equal)."""
    scene = tuple((0, s) for s in grid.shape)
    result = infer_context(raw, valid, normalizer, scene, scene, grid, window, predictor, refiner)
    return finish_block(result, scene, scene, num_classes, with_probabilities=True)
