"""Tests of the band-limit (Gerchberg-Papoulis) refinement of a gap fill."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from bcdi_gapfill.fill.classical import fill_gap
from bcdi_gapfill.core.geometry import synthetic_gap_mask
from bcdi_gapfill.fill.refine import autocorrelation_support, band_limit_residual, refine_band_limited

N = 32


def _crystal(radius: float = 4.5, n: int = N) -> np.ndarray:
    """A small compact object (a ball cut by a plane), centred in an n^3 array."""
    z, y, x = np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")
    return ((z ** 2 + y ** 2 + x ** 2 <= radius ** 2) & (z + 0.5 * x <= 0.6 * radius)).astype(float)


def _intensity(obj: np.ndarray, peak: float = 1e5) -> np.ndarray:
    amp = sfft.fftshift(sfft.fftn(sfft.ifftshift(obj)))
    intensity = np.abs(amp) ** 2
    return intensity * (peak / intensity.max())


def _true_support(obj: np.ndarray) -> np.ndarray:
    """Exact autocorrelation support of ``obj`` (centred layout)."""
    auto = sfft.fftshift(sfft.ifftn(np.abs(sfft.fftn(obj != 0)) ** 2).real)
    return auto > 0.5


@pytest.fixture(scope="module")
def pattern():
    obj = _crystal()
    intensity = _intensity(obj)
    gap = synthetic_gap_mask(intensity.shape, "cross", 3, position=N // 2 - 1, position2=N // 2 - 2)
    linear = fill_gap(intensity, gap, "linear")
    return obj, intensity, gap, linear


@pytest.fixture(scope="module")
def larger():
    """64^3, oversampling ~4.5: the gap is a small part of the array, as in a measurement."""
    obj = _crystal(7.0, 64)
    intensity = _intensity(obj)
    gap = synthetic_gap_mask(intensity.shape, "cross", 3, position=31, position2=30)
    return obj, intensity, gap, fill_gap(intensity, gap, "linear")


def _gap_error(truth, fill, gap):
    return float(np.linalg.norm(truth[gap] - fill[gap]) / np.linalg.norm(truth[gap]))


@pytest.mark.parametrize("solver", ["cg", "gp"])
@pytest.mark.parametrize("start", ["linear", "zeros"])
def test_measured_voxels_are_kept(pattern, solver, start):
    _, intensity, gap, linear = pattern
    rng = np.random.default_rng(0)
    counts = rng.poisson(intensity).astype(np.float32)
    before_counts, before_gap = counts.copy(), gap.copy()
    initial = linear if start == "linear" else None
    out = refine_band_limited(counts, gap, initial, n_iter=5, solver=solver)
    assert out.dtype == np.float32 and out.shape == counts.shape
    assert np.array_equal(out[~gap], counts[~gap])  # bit-identical
    assert np.isfinite(out).all() and (out >= 0).all()
    assert np.array_equal(counts, before_counts) and np.array_equal(gap, before_gap)
    assert not np.array_equal(out[gap], (linear if initial is not None else np.zeros_like(linear))[gap])


def test_gap_values_of_counts_are_ignored(pattern):
    _, intensity, gap, linear = pattern
    a = intensity.copy()
    a[gap] = np.nan
    b = intensity.copy()
    b[gap] = 1e9
    np.testing.assert_array_equal(refine_band_limited(a, gap, linear, n_iter=3),
                                  refine_band_limited(b, gap, linear, n_iter=3))


def test_improves_a_band_limited_pattern_from_a_linear_fill(larger):
    """|FT of a compact object|^2 with a gap, defaults (estimated support): closer to the truth."""
    _, intensity, gap, linear = larger
    before = _gap_error(intensity, linear, gap)
    refined = refine_band_limited(intensity, gap, linear)
    assert _gap_error(intensity, refined, gap) < 0.9 * before
    dim = gap & (linear < 0.1 * linear.max())
    assert dim.any() and np.array_equal(refined[dim], linear[dim])  # below refine_above: the start
    every = refine_band_limited(intensity, gap, linear, refine_above=None)
    assert _gap_error(intensity, every, gap) < 0.9 * before


@pytest.mark.parametrize("solver, n_iter", [("cg", 100), ("gp", 300)])
def test_exact_support_nearly_recovers_the_gap(larger, solver, n_iter):
    obj, intensity, gap, linear = larger
    refined = refine_band_limited(intensity, gap, linear, support=_true_support(obj), solver=solver,
                                  n_iter=n_iter, refine_above=None)
    assert _gap_error(intensity, refined, gap) < 0.3 * _gap_error(intensity, linear, gap)


def test_gp_never_moves_away_from_the_truth_with_the_exact_support(pattern):
    """Alternating projections onto convex sets that hold the truth (POCS): monotone error."""
    obj, intensity, gap, linear = pattern
    support = _true_support(obj)
    errors = [_gap_error(intensity, linear, gap)]
    for n in (1, 5, 20):
        out = refine_band_limited(intensity, gap, linear, support=support, solver="gp", n_iter=n,
                                  refine_above=None)
        errors.append(_gap_error(intensity, out, gap))
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


def test_truth_is_a_fixed_point(pattern):
    obj, intensity, gap, _ = pattern
    out = refine_band_limited(intensity, gap, intensity, support=_true_support(obj), refine_above=None)
    np.testing.assert_allclose(out[gap], intensity[gap], rtol=1e-4, atol=1e-6 * intensity.max())


def test_pure_version_from_zeros_recovers_part_of_the_gap(pattern):
    obj, intensity, gap, _ = pattern
    out = refine_band_limited(intensity, gap, None, support=_true_support(obj), n_iter=100)
    assert _gap_error(intensity, out, gap) < 0.5  # zeros: error 1.0


def test_estimated_support_covers_the_true_one(pattern):
    obj, intensity, _, _ = pattern
    true = _true_support(obj)
    est = autocorrelation_support(intensity, threshold=1e-3)
    assert est[N // 2, N // 2, N // 2]
    assert est[true].mean() > 0.99
    assert est.mean() < 0.5  # a real constraint, not the whole array
    np.testing.assert_array_equal(est, np.roll(est[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))  # centrosymmetric
    assert band_limit_residual(intensity, true) < 1e-10
    assert band_limit_residual(intensity, np.zeros_like(true) | (np.arange(N) == N // 2)[:, None, None]) > 0.1


def test_return_support_and_given_support(pattern):
    _, intensity, gap, linear = pattern
    out, support = refine_band_limited(intensity, gap, linear, n_iter=3, return_support=True)
    assert support.dtype == bool and support.shape == intensity.shape
    again = refine_band_limited(intensity, gap, linear, n_iter=3, support=support)
    np.testing.assert_array_equal(out, again)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"solver": "magic"}, ValueError, "unknown solver"),
    ({"n_iter": 0}, ValueError, "n_iter"),
    ({"refine_above": 1.5}, ValueError, "refine_above"),
    ({"tol": -1}, ValueError, "tol"),
    ({"support": np.zeros((N, N, N), bool)}, ValueError, "support is empty"),
    ({"support": np.zeros((N, N, 5), bool)}, ValueError, "does not match"),
    ({"support": np.zeros((N, N, N))}, TypeError, "boolean"),
    ({"initial": -np.ones((N, N, N))}, ValueError, "negative"),
    ({"initial": np.ones((N, N))}, ValueError, "3D"),
])
def test_bad_arguments(pattern, kwargs, exc, match):
    _, intensity, gap, linear = pattern
    args = {"initial": linear, **kwargs}
    with pytest.raises(exc, match=match):
        refine_band_limited(intensity, gap, **args)


@pytest.mark.parametrize("counts, gap, exc, match", [
    (np.ones((N, N)), np.zeros((N, N), bool), ValueError, "3D"),
    (np.ones((N, N, N), complex), np.zeros((N, N, N), bool), TypeError, "real numbers"),
    (np.ones((N, N, N)), np.ones((N, N, N), bool), ValueError, "every voxel"),
    (np.ones((N, N, N)), np.zeros((N, N, N), int), TypeError, "boolean"),
    (-np.ones((N, N, N)), np.zeros((N, N, N), bool), ValueError, "negative"),
])
def test_bad_data(counts, gap, exc, match):
    with pytest.raises(exc, match=match):
        refine_band_limited(counts, gap)


def test_autocorrelation_support_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        autocorrelation_support(np.ones((8, 8, 8)), threshold=0)
    with pytest.raises(ValueError, match="identically zero"):
        autocorrelation_support(np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="dilation"):
        autocorrelation_support(np.ones((8, 8, 8)), dilation=-1)


def test_refinement_table_and_markdown():
    import torch

    from bcdi_gapfill.nn.model import build_model
    from bcdi_gapfill.fill.refine import REFINE_METHODS, refinement_markdown, refinement_table

    torch.manual_seed(0)
    net = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}).eval()
    table = refinement_table((4.0,), (3,), (400_100,), size=40, model=net, stride=16, refine_options={"n_iter": 10})
    (row,) = table["rows"]
    assert row["width"] == 3 and row["oversampling"] == 4.0 and 0 < row["ceiling"] <= 1
    for name in REFINE_METHODS:
        assert -1 <= row[name]["pcc"] <= 1 and row[name]["amplitude_error"] >= 0 and row[name]["seconds"] >= 0
    assert row["model+gp"]["seconds"] >= row["model"]["seconds"]  # includes its starting fill
    text = refinement_markdown(table)
    assert text.count("| 4 | 3 |") == 2 and "Poisson ceiling" in text
    with pytest.raises(ValueError, match="held-out"):
        refinement_table((4.0,), (3,), (7,), size=40)
