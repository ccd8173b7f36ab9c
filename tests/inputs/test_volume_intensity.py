"""Card intensity modes: CT window, per-volume z-score and percentiles (scene-wide, never per block)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.normalization import normalize, resolve_normalization
from pipeline.inputs.scene_statistics import array_reader


def test_ct_window_clips_hounsfield_units_to_zero_one():
    hu = np.array([[[-2000.0, -1000.0, 0.0, 400.0, 3000.0]]], dtype=np.float32)
    out = normalize(hu, {"kind": "window", "low": -1000.0, "high": 1000.0})
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.5, 0.7, 1.0], atol=1e-6)


def test_per_scene_kinds_refuse_to_run_unresolved():
    with pytest.raises(ValueError, match="resolve"):
        normalize(np.zeros((1, 2, 2, 2)), {"kind": "zscore"})


@settings(max_examples=25, deadline=None)
@given(slab=st.integers(1, 40), seed=st.integers(0, 1000))
def test_zscore_is_the_whole_volume_s_statistics_whatever_the_slab(slab, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 80, size=(2, 23, 11, 9)).astype(np.float32)
    valid = rng.random((23, 11, 9)) > 0.2
    spec = resolve_normalization({"kind": "zscore"}, array_reader(image, valid), valid.shape, slab)
    assert spec["kind"] == "meanstd"
    values = image[:, valid].astype(np.float64)
    np.testing.assert_allclose(spec["mean"], values.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(spec["std"], values.std(axis=1), rtol=1e-6)
    out = normalize(image, spec)[:, valid]
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=1), 1.0, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(slab=st.integers(1, 30), seed=st.integers(0, 1000))
def test_percentiles_use_one_lattice_whatever_the_slab(slab, seed):
    import pipeline.inputs.scene_statistics as stats

    rng = np.random.default_rng(seed)
    image = rng.gamma(2.0, 50.0, size=(1, 30, 12, 10))
    read = array_reader(image)
    exact = resolve_normalization({"kind": "percentile", "lower": 1, "upper": 99}, read, (30, 12, 10), slab)
    np.testing.assert_allclose(exact["low"], [np.percentile(image, 1)])
    np.testing.assert_allclose(exact["high"], [np.percentile(image, 99)])
    # subsampled (every 2nd voxel per axis): the same lattice for every slab thickness
    sampled = stats.scene_statistics(read, (30, 12, 10), slab, want_sample=True, max_sample=500)["sample"]
    np.testing.assert_array_equal(np.sort(sampled[0]), np.sort(image[0, ::2, ::2, ::2].ravel()))
