"""Normalising straight into a batch slot gives the bits of a fresh array, for every kind and dtype."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.normalization import normalize

SPECS = [
    {"kind": "none"},
    {"kind": "scale", "scale": 1 / 255, "offset": -0.5},
    {"kind": "meanstd", "mean": [10.0, 120.5], "std": [3.0, 0.0]},
    {"kind": "minmax", "min": [0.0, 5.0], "max": [255.0, 5.0]},
    {"kind": "window", "low": [-100.0, 0.0], "high": [300.0, 80.0]},
]


@settings(max_examples=60, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_normalising_into_a_strided_slot_equals_a_fresh_array(spec, dtype, rows, cols, seed) -> None:
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=(2, rows, cols)) * 400).astype(dtype)
    fresh = normalize(image, spec)
    batch = np.full((3, 2, rows + 2, cols + 3), np.nan, np.float32)  # the image fills part of slot 1
    slot = batch[1, :, :rows, :cols]
    returned = normalize(image, spec, out=slot)
    assert returned is slot
    assert fresh.dtype == np.float32
    np.testing.assert_array_equal(slot.view(np.uint32), fresh.view(np.uint32))
    assert np.isnan(batch[0]).all() and np.isnan(batch[2]).all() and np.isnan(batch[1, :, rows:]).all()
