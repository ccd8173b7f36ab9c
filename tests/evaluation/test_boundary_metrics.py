"""Boundary F1: boundary maps, the pixel tolerance, unlabelled pixels, 2D and 3D."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.evaluation.boundary_metrics import BoundaryCounts, boundary_counts, boundary_map


def halves(shape: tuple[int, ...], cut: int) -> np.ndarray:
    """Class 0 before column ``cut`` on the last axis, class 1 from it."""
    out = np.zeros(shape, dtype=np.int64)
    out[..., cut:] = 1
    return out


def test_boundary_map_marks_both_sides_of_an_edge() -> None:
    edge = boundary_map(halves((4, 6), 3))
    assert edge[:, 2].all() and edge[:, 3].all()
    assert edge.sum() == 8


def test_shift_within_tolerance_scores_one_and_beyond_it_scores_zero() -> None:
    truth = halves((20, 40), 20)
    assert boundary_counts(halves((20, 40), 22), truth, tolerance=2).f1 == 1.0
    far = boundary_counts(halves((20, 40), 30), truth, tolerance=2)
    assert far.f1 == 0.0 and far.pred_total == far.truth_total == 40


def test_spurious_blobs_lower_precision_not_recall() -> None:
    truth = halves((32, 32), 16)
    pred = truth.copy()
    pred[4:8, 4:8] = 1  # an island far from the true edge
    c = boundary_counts(pred, truth)
    assert c.recall == 1.0 and c.precision < 1.0 and 0 < c.f1 < 1


def test_unlabelled_pixels_belong_to_no_boundary() -> None:
    truth = halves((10, 10), 5)
    truth[:, :5] = -1  # left side unlabelled: no reference boundary left at all
    pred = halves((10, 10), 5)
    c = boundary_counts(pred, truth, ignore=-1)
    assert c.truth_total == 0 and c.pred_total == 0 and np.isnan(c.f1)


def test_counts_add_up_over_images_and_work_in_3d() -> None:
    truth = halves((6, 8, 10), 5)
    one = boundary_counts(halves((6, 8, 10), 6), truth, tolerance=1)
    assert one.f1 == 1.0
    total = one + boundary_counts(halves((6, 8, 10), 9), truth, tolerance=1)
    assert total.truth_total == 2 * one.truth_total
    assert 0 < total.f1 < 1
    assert BoundaryCounts() + one == one


@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(2, 12), st.integers(2, 12)), elements=st.integers(0, 3)))
def test_a_prediction_equal_to_the_reference_scores_one(labels: np.ndarray) -> None:
    c = boundary_counts(labels, labels, tolerance=0)
    if c.truth_total:
        assert c.f1 == 1.0
    else:
        assert np.isnan(c.f1)
