"""Finishing a block slab by slab gives argmax labels, nodata where uncovered, and exact label statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.engine.finishing as finishing
from pipeline.engine.accumulation import RegionResult
from pipeline.engine.finishing import finish_block
from pipeline.stores.labels import label_nodata


@settings(max_examples=40, deadline=None)
@given(
    classes=st.sampled_from([2, 3, 7, 17, 40]),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 11)),
    slab=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    holes=st.booleans(),
)
def test_finish_block_equals_argmax_and_brute_force_statistics(classes, shape, slab, seed, holes):
    rng = np.random.default_rng(seed)
    # coarse values make ties common: the first class must win them, as argmax does
    probs = rng.integers(0, 4, (classes, *shape)).astype(np.float32) / 4
    covered = rng.random(shape) > 0.3 if holes else np.ones(shape, dtype=bool)
    old = finishing.SLAB_PIXELS
    finishing.SLAB_PIXELS = slab  # many slabs, uneven last one
    try:
        out = finish_block(
            RegionResult(torch.from_numpy(probs), torch.from_numpy(covered)),
            context=((0, shape[0]), (0, shape[1])),
            region=((0, shape[0]), (0, shape[1])),
            num_classes=classes,
            with_probabilities=False,
        )
    finally:
        finishing.SLAB_PIXELS = old

    expected = probs.argmax(axis=0)
    assert np.array_equal(out.labels[covered], expected[covered])
    assert (out.labels[~covered] == label_nodata(classes)).all()
    top = probs.max(axis=0)
    for c in range(classes):
        where = covered & (expected == c)
        assert out.label_stats[c, 0] == where.sum()
        assert out.label_stats[c, 1] == pytest.approx(top[where].sum(dtype=np.float64), rel=1e-6, abs=1e-6)


def test_finish_block_crops_the_context_to_the_region():
    probs = torch.zeros((2, 6, 8))
    probs[1, :, 4:] = 1.0
    out = finish_block(
        RegionResult(probs, torch.ones((6, 8), dtype=torch.bool)),
        context=((10, 16), (20, 28)),
        region=((12, 15), (22, 28)),
        num_classes=2,
        with_probabilities=True,
    )
    assert out.labels.shape == (3, 6)
    assert out.labels.tolist() == [[0, 0, 1, 1, 1, 1]] * 3
    assert out.probabilities.shape == (2, 3, 6)
