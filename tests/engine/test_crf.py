"""CRF refinement: mean-field math, blockwise exactness, denoising with edges kept, nodata."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.engine.crf import (
    CRFParams,
    band_stats,
    dense_crf,
    local_crf,
    refine,
    window_offsets,
)

# --------------------------------------------------------------------------- helpers


def piecewise_scene(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A clean piecewise-constant 3-band image in [0, 1] and its 3-class truth.

    Background (0), an axis-aligned box (1) and a ball (2), each with its own colour plus a
    little sensor noise.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64)
    truth = np.zeros(shape, dtype=np.int64)
    box = np.ones(shape, dtype=bool)
    for axis, n in enumerate(shape):
        box &= (grid[axis] >= n // 8) & (grid[axis] < n // 2)
    truth[box] = 1
    centre = [0.62 * n for n in shape]
    radius = 0.25 * min(shape)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    truth[ball] = 2
    palette = np.array([[0.2, 0.5, 0.3], [0.8, 0.3, 0.3], [0.3, 0.3, 0.9]])
    image = palette[truth].transpose(-1, *range(len(shape)))
    image = image + rng.normal(0.0, 0.01, image.shape)
    return image.astype(np.float32), truth


def noisy_probs(truth: np.ndarray, classes: int, flip: float, seed: int = 1) -> np.ndarray:
    """Probabilities from a noisy one-hot: a fraction ``flip`` of labels replaced at random."""
    rng = np.random.default_rng(seed)
    labels = truth.copy()
    flipped = rng.random(truth.shape) < flip
    labels[flipped] = rng.integers(0, classes, flipped.sum())
    probs = np.full((classes, *truth.shape), 0.4 / (classes - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[None], 0.6, axis=0)
    return probs


def mean_iou(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    ious = []
    for c in range(classes):
        union = np.logical_or(pred == c, truth == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, truth == c).sum() / union)
    return float(np.mean(ious))


def boundary_mask(truth: np.ndarray) -> np.ndarray:
    """Pixels with a differently labelled face neighbour."""
    edge = np.zeros(truth.shape, dtype=bool)
    for axis in range(truth.ndim):
        diff = np.diff(truth, axis=axis) != 0
        lo = [slice(None)] * truth.ndim
        hi = [slice(None)] * truth.ndim
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return edge


def random_problem(shape: tuple[int, ...], classes: int, seed: int):
    """Random probs, a smooth-ish random image and a valid mask with a nodata hole."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=shape).astype(np.float64)
    probs = np.moveaxis(probs, -1, 0)
    image = rng.uniform(0, 255, (2, *shape))
    valid = np.ones(shape, dtype=bool)
    valid[tuple(slice(n // 3, n // 3 + 2) for n in shape)] = False
    return probs, image, valid


# --------------------------------------------------------------------------- (a) math


def reference_iteration(
    probs: np.ndarray,
    image: np.ndarray,
    valid: np.ndarray,
    params: CRFParams,
    spacing: tuple[float, ...],
) -> np.ndarray:
    """One mean-field iteration written out pixel pair by pixel pair (no vectorisation)."""
    classes = probs.shape[0]
    shape = probs.shape[1:]
    mu = params.compatibility_matrix(classes)
    logp = np.log(np.maximum(probs, params.eps))
    q0 = np.exp(logp - logp.max(0))
    q0 /= q0.sum(0)
    sp = np.asarray(params.resolve_spacing(len(shape), spacing))
    radii = params.window_radii(len(shape), spacing)
    out = probs.copy()
    pixels = list(np.ndindex(*shape))
    for i in pixels:
        if not valid[i]:
            continue
        m_app = np.zeros(classes)
        m_smooth = np.zeros(classes)
        n_app = n_smooth = 1.0  # the kernel's value at the pixel itself
        for j in pixels:
            if j == i or not valid[j]:
                continue
            off = np.subtract(j, i)
            if np.any(np.abs(off) > radii):
                continue
            dx2 = float(np.sum((off * sp) ** 2))
            if params.window == "ball" and dx2 > params.radius**2:
                continue
            df2 = float(np.sum((image[(slice(None), *i)] - image[(slice(None), *j)]) ** 2))
            k_app = math.exp(
                -dx2 / (2 * params.appearance_sigma_pos**2) - df2 / (2 * params.appearance_sigma_feat**2)
            )
            k_smooth = math.exp(-dx2 / (2 * params.smooth_sigma**2))
            m_app += k_app * q0[(slice(None), *j)]
            m_smooth += k_smooth * q0[(slice(None), *j)]
            n_app += k_app
            n_smooth += k_smooth
        if params.normalize_kernels:
            m_app /= n_app
            m_smooth /= n_smooth
        message = params.appearance_weight * m_app + params.smooth_weight * m_smooth
        pairwise = np.array([sum(mu[a, b] * message[b] for b in range(classes)) for a in range(classes)])
        logits = logp[(slice(None), *i)] - pairwise
        e = np.exp(logits - logits.max())
        out[(slice(None), *i)] = e / e.sum()
    return out


@pytest.mark.parametrize(
    ("shape", "spacing", "classes", "kw"),
    [
        # Window covering the whole 5x6 image: the full dense CRF, Potts, normalised kernels.
        ((5, 6), (1.0, 1.0), 2, {"radius": 8.0}),
        (
            (5, 6),
            (1.0, 1.0),
            2,
            {"radius": 8.0, "normalize_kernels": False, "smooth_weight": 0.3, "appearance_weight": 0.5},
        ),
        # Truncated windows (ball and box) and a non-Potts compatibility.
        (
            (5, 6),
            (1.0, 1.0),
            3,
            {"radius": 2.0, "window": "box", "compatibility": [[0, 1, 2], [1, 0, 0.5], [2, 0.5, 0]]},
        ),
        ((5, 6), (1.0, 1.0), 2, {"radius": 2.3}),
        # 3D with anisotropic spacing.
        ((3, 4, 4), (2.0, 1.0, 1.0), 2, {"radius": 3.0, "smooth_sigma": 1.5}),
    ],
)
def test_one_iteration_equals_pairwise_reference(shape, spacing, classes, kw):
    probs, image, valid = random_problem(shape, classes, seed=len(kw))
    params = CRFParams(iterations=1, appearance_sigma_feat=60.0, appearance_sigma_pos=3.0, **kw)
    expected = reference_iteration(probs, image, valid, params, spacing)
    got64 = local_crf(
        torch.from_numpy(probs), torch.from_numpy(image), torch.from_numpy(valid), params, spacing=spacing
    )
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=0, atol=1e-12)
    got32 = local_crf(
        torch.from_numpy(probs).float(),
        torch.from_numpy(image).float(),
        torch.from_numpy(valid),
        params,
        spacing=spacing,
    )
    np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=1e-5)


def test_explicit_potts_matrix_equals_default():
    probs, image, valid = random_problem((12, 10), 3, seed=3)
    args = (torch.from_numpy(probs), torch.from_numpy(image), torch.from_numpy(valid))
    potts = (1.0 - np.eye(3)).tolist()
    a = local_crf(*args, CRFParams(iterations=3, radius=2))
    b = local_crf(*args, CRFParams(iterations=3, radius=2, compatibility=potts))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_window_offsets_are_symmetric_and_exclude_centre():
    for ndim, spacing in [(2, None), (3, (3.0, 1.0, 1.0))]:
        offs = [o for o, _ in window_offsets(CRFParams(radius=4), ndim, spacing)]
        assert (0,) * ndim not in offs
        assert sorted(offs) == sorted(tuple(-v for v in o) for o in offs)
    assert len(window_offsets(CRFParams(radius=4), 2)) == 48  # integer points in the disc
    assert len(window_offsets(CRFParams(radius=4, window="box"), 2)) == 80


# --------------------------------------------------------------------------- (b) blocks

PARAMS_2D = CRFParams(iterations=3, radius=2.5)  # window radius 2 px, reach 6
PARAMS_3D = CRFParams(iterations=2, radius=2.0)  # spacing (2,1,1): radii (1,2,2), reach (2,4,4)
SPACING_3D = (2.0, 1.0, 1.0)


def _scene_inputs(shape: tuple[int, ...], seed: int):
    image, truth = piecewise_scene(shape, seed)
    probs = noisy_probs(truth, 3, flip=0.3, seed=seed)
    valid = np.ones(shape, dtype=bool)
    valid[tuple(slice(n // 2, n // 2 + 3) for n in shape)] = False  # a nodata patch
    params_img = torch.from_numpy(image * 255)
    return torch.from_numpy(probs), params_img, torch.from_numpy(valid)


@pytest.fixture(scope="module")
def whole_2d():
    probs, image, valid = _scene_inputs((34, 40), seed=5)
    return probs, image, valid, local_crf(probs, image, valid, PARAMS_2D)


@pytest.fixture(scope="module")
def whole_3d():
    probs, image, valid = _scene_inputs((12, 18, 16), seed=6)
    return probs, image, valid, local_crf(probs, image, valid, PARAMS_3D, spacing=SPACING_3D)


def refine_block(probs, image, valid, params, start, stop, spacing=None):
    """What the engine does: read block + reach (clipped to the scene), refine, crop."""
    reach = params.reach(probs.ndim - 1, spacing)
    lo = [max(0, s - r) for s, r in zip(start, reach)]
    hi = [min(n, e + r) for n, e, r in zip(probs.shape[1:], stop, reach)]
    read = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = local_crf(
        probs[(slice(None), *read)], image[(slice(None), *read)], valid[read], params, spacing=spacing
    )
    crop = tuple(slice(s - a, e - a) for s, e, a in zip(start, stop, lo))
    return out[(slice(None), *crop)]


def block_strategy(shape: tuple[int, ...]):
    def one_axis(n: int):
        return st.integers(0, n - 1).flatmap(lambda s: st.integers(s + 1, n).map(lambda e: (s, e)))

    return st.tuples(*(one_axis(n) for n in shape))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=block_strategy((34, 40)))
def test_local_crf_block_with_reach_halo_equals_whole_2d(whole_2d, block):
    probs, image, valid, whole = whole_2d
    start, stop = zip(*block)
    got = refine_block(probs, image, valid, PARAMS_2D, start, stop)
    want = whole[(slice(None), *(slice(s, e) for s, e in block))]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=block_strategy((12, 18, 16)))
def test_local_crf_block_with_reach_halo_equals_whole_3d(whole_3d, block):
    probs, image, valid, whole = whole_3d
    start, stop = zip(*block)
    got = refine_block(probs, image, valid, PARAMS_3D, start, stop, spacing=SPACING_3D)
    want = whole[(slice(None), *(slice(s, e) for s, e in block))]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("block", [5, 8, 13, 40])
def test_blockwise_tiling_reassembles_whole_scene_2d(whole_2d, block):
    probs, image, valid, whole = whole_2d
    out = torch.empty_like(whole)
    for y in range(0, 34, block):
        for x in range(0, 40, block):
            start, stop = (y, x), (min(34, y + block), min(40, x + block))
            out[:, y : stop[0], x : stop[1]] = refine_block(probs, image, valid, PARAMS_2D, start, stop)
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("block", [(4, 6, 6), (5, 9, 16)])
def test_blockwise_tiling_reassembles_whole_scene_3d(whole_3d, block):
    probs, image, valid, whole = whole_3d
    shape = tuple(probs.shape[1:])
    out = torch.empty_like(whole)
    for start in np.ndindex(*(math.ceil(n / b) for n, b in zip(shape, block))):
        lo = [s * b for s, b in zip(start, block)]
        hi = [min(n, a + b) for n, a, b in zip(shape, lo, block)]
        out[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))] = refine_block(
            probs, image, valid, PARAMS_3D, lo, hi, spacing=SPACING_3D
        )
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-5)


def test_reach_is_exactly_how_far_an_input_change_travels(whole_2d):
    """A change `reach` pixels away moves the output; one pixel further away does not."""
    probs, image, valid, whole = whole_2d
    reach = PARAMS_2D.reach(2)[0]
    y, x = 8, 10
    for dist, moves in [(reach, True), (reach + 1, False)]:
        p = probs.clone()
        p[:, y, x + dist] = torch.tensor([0.98, 0.01, 0.01])
        out = local_crf(p, image, valid, PARAMS_2D)
        assert bool((out[:, y, x] - whole[:, y, x]).abs().max() > 0) == moves


def test_small_cache_budget_gives_identical_result(whole_2d):
    probs, image, valid, whole = whole_2d
    params = CRFParams(iterations=3, radius=2.5, max_cache_mb=0)
    torch.testing.assert_close(local_crf(probs, image, valid, params), whole, rtol=0, atol=0)


# --------------------------------------------------------------------------- (c) denoising


def test_noisy_label_map_is_cleaned_and_image_edges_are_kept():
    image, truth = piecewise_scene((64, 64), seed=0)
    probs = noisy_probs(truth, 3, flip=0.3)
    params = CRFParams(band_low=(0, 0, 0), band_high=(1, 1, 1))  # the defaults otherwise
    out = local_crf(torch.from_numpy(probs), torch.from_numpy(image), None, params)
    before = probs.argmax(0)
    after = out.argmax(0).numpy()
    assert mean_iou(after, truth, 3) > mean_iou(before, truth, 3) + 0.25
    assert mean_iou(after, truth, 3) > 0.97
    edge = boundary_mask(truth)
    assert (after[edge] == truth[edge]).mean() > 0.97
    np.testing.assert_allclose(out.sum(0).numpy(), 1.0, atol=1e-5)


def test_multiband_non_rgb_bands_are_selected_and_scaled():
    """A 5-band 16-bit-like image: boundaries live in bands 1 and 3, the rest is noise."""
    image3, truth = piecewise_scene((48, 48), seed=2)
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 10000, (5, 48, 48)).astype(np.float32)
    image[1] = 1000 + 5000 * image3[0]
    image[3] = 1000 + 5000 * image3[2]
    low, high = band_stats(image, bands=(1, 3), percentiles=(0, 100))
    params = CRFParams(bands=(1, 3), band_low=low, band_high=high)
    probs = noisy_probs(truth, 3, flip=0.3)
    out = local_crf(torch.from_numpy(probs), torch.from_numpy(image), None, params)
    assert mean_iou(out.argmax(0).numpy(), truth, 3) > 0.95


def test_band_stats_ignore_nodata_and_non_finite():
    image = np.zeros((2, 10, 10), dtype=np.float32)
    image[0] = np.arange(100).reshape(10, 10)
    image[1] = 7.0
    image[0, 0, 0] = np.nan
    valid = np.ones((10, 10), dtype=bool)
    valid[5:] = False
    low, high = band_stats(image, valid, percentiles=(0, 100))
    assert low == (1.0, 7.0)
    assert high == (49.0, 8.0)  # constant band: high = low + 1


# --------------------------------------------------------------------------- (d) nodata


@pytest.mark.parametrize("fn", [local_crf, dense_crf])
def test_nodata_pixels_do_not_influence_valid_ones(fn):
    image, truth = piecewise_scene((40, 44), seed=3)
    probs = noisy_probs(truth, 3, flip=0.3, seed=3)
    rng = np.random.default_rng(3)
    valid = rng.random(truth.shape) > 0.2
    valid[10:20, 5:30] = False
    params = CRFParams(band_low=(0, 0, 0), band_high=(1, 1, 1), iterations=3)
    out_a = fn(torch.from_numpy(probs), torch.from_numpy(image), torch.from_numpy(valid), params)

    probs_b, image_b = probs.copy(), image.copy()
    probs_b[:, ~valid] = rng.random((3, (~valid).sum()))
    image_b[:, ~valid] = rng.uniform(-5, 5, (3, (~valid).sum()))
    probs_b[0, 12, 6] = np.nan
    image_b[1, 15, 7] = np.inf
    out_b = fn(torch.from_numpy(probs_b), torch.from_numpy(image_b), torch.from_numpy(valid), params)
    atol = 0 if fn is local_crf else 1e-6
    torch.testing.assert_close(out_a[:, valid], out_b[:, valid], rtol=0, atol=atol)
    # Nodata keeps its input.
    torch.testing.assert_close(
        out_b[:, ~valid], torch.from_numpy(probs_b)[:, ~valid], rtol=0, atol=0, equal_nan=True
    )


def test_nodata_strip_acts_like_the_scene_edge():
    """Valid pixels left of a nodata strip as wide as the window refine as if the scene ended
    there: nothing crosses a gap the window cannot span."""
    image, truth = piecewise_scene((30, 36), seed=7)
    probs = torch.from_numpy(noisy_probs(truth, 3, flip=0.3, seed=7))
    image = torch.from_numpy(image * 255)
    valid = torch.ones(30, 36, dtype=torch.bool)
    valid[:, 17:20] = False  # window radius 3
    compat = [[0, 1, 2], [1, 0, 1], [2, 1, 0]]  # non-Potts: uniform messages would not cancel
    params = CRFParams(iterations=3, radius=3, compatibility=compat)
    whole = local_crf(probs, image, valid, params)
    left = local_crf(probs[:, :, :17], image[:, :, :17], None, params)
    torch.testing.assert_close(whole[:, :, :17], left, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- (e) DenseCRF


def test_dense_crf_cleans_noisy_labels():
    image, truth = piecewise_scene((64, 64), seed=0)
    probs = noisy_probs(truth, 3, flip=0.3)
    params = CRFParams(mode="dense", band_low=(0, 0, 0), band_high=(1, 1, 1))
    out = refine(torch.from_numpy(probs), torch.from_numpy(image), None, params)
    assert isinstance(out, torch.Tensor) and out.shape == probs.shape
    after = out.argmax(0).numpy()
    assert mean_iou(after, truth, 3) > mean_iou(probs.argmax(0), truth, 3) + 0.25
    edge = boundary_mask(truth)
    assert (after[edge] == truth[edge]).mean() > 0.9
    # numpy in, numpy out
    assert isinstance(dense_crf(probs, image, None, params), np.ndarray)


def test_dense_crf_rejects_3d_and_explains_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="2D"):
        dense_crf(np.full((2, 3, 4, 4), 0.5), None, None, CRFParams(mode="dense"))
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match="pydensecrf2"):
        dense_crf(np.full((2, 4, 4), 0.5), None, None, CRFParams(mode="dense"))


# --------------------------------------------------------------------------- (f) 3D


def test_reach_follows_anisotropic_spacing():
    params = CRFParams()  # local: iterations 5, radius 4
    assert params.reach(2) == (20, 20)
    # mm spacing, normalised to the finest axis: (3.57, 1, 1) -> radii (1, 4, 4)
    assert params.reach(3, (2.5, 0.7, 0.7)) == (5, 20, 20)
    physical = CRFParams(normalize_spacing=False, radius=2.0, iterations=3)
    assert physical.reach(3, (2.0, 0.5, 0.5)) == (3, 12, 12)
    assert CRFParams(mode="dense").reach(2) == (40, 40)  # dense: 10 iterations, same rule (approximation)


def test_3d_anisotropic_volume_is_refined():
    image, truth = piecewise_scene((10, 32, 32), seed=4)
    probs = noisy_probs(truth, 3, flip=0.3, seed=4)
    params = CRFParams(band_low=(0, 0, 0), band_high=(1, 1, 1), radius=3.0, iterations=3)
    out = local_crf(torch.from_numpy(probs), torch.from_numpy(image), None, params, spacing=(2.0, 1.0, 1.0))
    assert out.shape == probs.shape
    np.testing.assert_allclose(out.sum(0).numpy(), 1.0, atol=1e-5)
    assert mean_iou(out.argmax(0).numpy(), truth, 3) > mean_iou(probs.argmax(0), truth, 3) + 0.2


# --------------------------------------------------------------------------- params


def test_params_accept_config_lists_and_reject_bad_values():
    p = CRFParams(compatibility=[[0, 1], [1, 0]], bands=[2, 0], band_low=[0, 0], band_high=[1, 2])
    assert p.compatibility == ((0.0, 1.0), (1.0, 0.0)) and p.bands == (2, 0)
    hash(p)
    for bad in [
        {"mode": "crf"},
        {"iterations": -1},
        {"smooth_sigma": 0},
        {"band_low": (0,)},
        {"compatibility": [[0, 1]]},
        {"band_low": (1,), "band_high": (1,)},
    ]:
        with pytest.raises(ValueError):
            CRFParams(**bad)
    with pytest.raises(ValueError, match="spacing"):
        CRFParams().reach(3, (1.0, 1.0))
