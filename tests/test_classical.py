"""Tests of the classical gap fills (bcdi_gapfill.fill.classical)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bcdi_gapfill.fill.classical as C
import bcdi_gapfill.nn.prefill as P
from bcdi_gapfill.fill.classical import (
    METHODS,
    biharmonic_fill_torch,
    fill_gap,
    inpaint_biharmonic,
    interpolate_across_gap,
)

import skimage.restoration as skrest  # a core dependency: missing means a broken install, not a skip


# ----------------------------------------------------------------------------- helpers

def band_mask(shape, cols=(), rows=()):
    """Missing column bands (axis 2) and row bands (axis 1), over all frames."""
    m = np.zeros(shape, bool)
    for c0, c1 in cols:
        m[:, :, c0:c1] = True
    for r0, r1 in rows:
        m[:, r0:r1, :] = True
    return m


def pattern(shape, seed=0, peak=200.0):
    """Poisson counts of a Gaussian peak: realistic zeros and a large dynamic range."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    centre = np.array(shape, float)[:, None, None, None] / 2 + 0.3
    r2 = ((idx - centre) ** 2 * np.array([1.0, 0.8, 1.3])[:, None, None, None]).sum(0)
    return rng.poisson(peak * np.exp(-r2 / (0.05 * min(shape) ** 2)) + 0.2).astype(np.float32)


S = (12, 20, 22)
MASKS = {
    "column band": band_mask(S, cols=[(9, 12)]),
    "row band": band_mask(S, rows=[(5, 9)]),
    "cross": band_mask(S, cols=[(9, 12)], rows=[(5, 9)]),
    "two bands + cross": band_mask(S, cols=[(3, 5), (12, 15)], rows=[(10, 12)]),
    "edge cross": band_mask(S, cols=[(0, 3)], rows=[(17, 20)]),
    "scattered 3D": np.random.default_rng(1).random(S) < 0.05,
    "scattered detector pixels": np.broadcast_to(np.random.default_rng(2).random(S[1:]) < 0.05, S).copy(),
    "interior hole": np.pad(np.ones((4, 5, 3), bool), ((4, 4), (7, 8), (9, 10))),
}


def ramp(shape, a=(0.25, 1.5, 2.0), c=3.0):
    z, y, x = np.indices(shape).astype(float)
    return c + a[0] * z + a[1] * y + a[2] * x


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("counts, mask, match", [
    (np.zeros((4, 4)), np.zeros((4, 4), bool), "3D"),
    (np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5), bool), "3D"),
    (np.zeros((3, 4, 5), complex), np.zeros((3, 4, 5), bool), "real"),
    (np.zeros((3, 4, 5), bool), np.zeros((3, 4, 5), bool), "real"),
    (np.zeros((3, 4, 5)), np.zeros((3, 4, 5), np.uint8), "boolean"),
    (np.zeros((3, 4, 5)), np.zeros((3, 4, 6), bool), "shape"),
    (np.ones((3, 4, 5)), np.ones((3, 4, 5), bool), "every voxel"),
])
def test_validation_errors(counts, mask, match):
    with pytest.raises(ValueError, match=match):
        fill_gap(counts, mask)


@pytest.mark.parametrize("bad, match", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_measured_voxels_rejected(bad, match):
    counts = np.ones((3, 4, 5), np.float32)
    mask = np.zeros(counts.shape, bool)
    mask[:, :, 2] = True
    counts[1, 1, 1] = bad
    with pytest.raises(ValueError, match=match):
        fill_gap(counts, mask, "linear")


def test_negative_counts_rejected_in_log_mode_only():
    counts = np.ones((3, 4, 5))
    counts[0, 0, 0] = -2.0
    mask = band_mask(counts.shape, cols=[(2, 3)])
    with pytest.raises(ValueError, match="negative"):
        fill_gap(counts, mask, log=True)
    out = fill_gap(counts, mask, "linear", log=False)
    assert (out[mask] >= 0).all()


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        fill_gap(np.ones((3, 4, 5)), np.zeros((3, 4, 5), bool), "spline")


def test_nan_under_the_gap_is_ignored():
    counts = pattern(S)
    mask = MASKS["cross"]
    dirty = counts.copy()
    dirty[mask] = np.nan
    for method in METHODS:
        np.testing.assert_array_equal(fill_gap(dirty, mask, method), fill_gap(counts, mask, method))


# ----------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("log", [True, False])
def test_measured_untouched_gap_finite_nonnegative(method, mask_name, log):
    counts = pattern(S, seed=3)
    mask = MASKS[mask_name]
    counts_before, mask_before = counts.copy(), mask.copy()
    out = fill_gap(counts, mask, method, log=log)
    assert out.dtype == np.float32 and out.shape == counts.shape
    # inputs untouched, measured voxels bit-identical
    np.testing.assert_array_equal(counts, counts_before)
    np.testing.assert_array_equal(mask, mask_before)
    assert np.array_equal(out[~mask].view(np.uint32), counts[~mask].view(np.uint32))
    assert np.isfinite(out).all() and (out[mask] >= 0).all()
    if method == "zero":
        assert (out[mask] == 0).all()
    else:
        assert out[mask].max() > 0  # something was filled in


def test_integer_counts_and_no_gap():
    counts = pattern(S, seed=4)
    as_int = counts.astype(np.uint16)
    mask = MASKS["cross"]
    np.testing.assert_array_equal(fill_gap(as_int, mask, "cubic"), fill_gap(counts, mask, "cubic"))
    none = np.zeros(S, bool)
    for method in METHODS:
        out = fill_gap(counts, none, method)
        assert out is not counts and np.array_equal(out, counts)


# ----------------------------------------------------------------------------- 1D fills

@pytest.mark.parametrize("mask_name", [k for k in MASKS if k != "edge cross"])
def test_linear_exact_on_linear_ramp(mask_name):
    """Interior gaps (bands, crosses incl. their intersection, pixels, holes): exact."""
    mask = MASKS[mask_name]
    f = ramp(S)
    got = interpolate_across_gap(f, mask, "linear")
    np.testing.assert_allclose(got, f, rtol=1e-12, atol=1e-12)
    out = fill_gap(f.astype(np.float32), mask, "linear", log=False)
    np.testing.assert_allclose(out, f, rtol=2e-7)


def test_linear_exact_on_ramp_in_log_domain():
    mask = MASKS["cross"]
    counts = np.expm1(0.1 * ramp(S))
    out = fill_gap(counts, mask, "linear", log=True)
    np.testing.assert_allclose(out, counts, rtol=2e-6)


def reference_nearest_band(f, c0, c1):
    """Column band [c0, c1) strictly inside: value of the closer measured column
    (ties to the lower index)."""
    out = f.copy()
    for c in range(c0, c1):
        src = c0 - 1 if (c - (c0 - 1)) <= (c1 - c) else c1
        out[:, :, c] = f[:, :, src]
    return out


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7])
def test_nearest_and_linear_across_a_band(width):
    f = ramp(S, a=(0.3, 0.7, 1.9))
    c0 = 8
    mask = band_mask(S, cols=[(c0, c0 + width)])
    near = interpolate_across_gap(f, mask, "nearest")
    np.testing.assert_array_equal(near, reference_nearest_band(f, c0, c0 + width))
    lin = interpolate_across_gap(f, mask, "linear")
    np.testing.assert_allclose(lin, f, rtol=1e-13)
    # nearest is exact on a field constant across the gap
    g = ramp(S, a=(0.3, 0.7, 0.0))
    np.testing.assert_array_equal(interpolate_across_gap(g, mask, "nearest"), g)


def test_cubic_exact_on_cubic_polynomial():
    z, y, x = np.indices(S).astype(float)
    f = 50 + 0.5 * z + 2 * y + 0.02 * (x - 10) ** 3 - 0.3 * (x - 10) ** 2 + x
    pixels = np.zeros(S, bool)
    pixels[:, 2::5, 3::5] = True  # isolated pixels, two measured voxels on each side
    for mask in (MASKS["column band"], pixels, band_mask(S, cols=[(6, 10), (13, 15)])):
        np.testing.assert_allclose(interpolate_across_gap(f, mask, "cubic"), f, rtol=1e-11)
    # the cross intersection is exact as well for a field cubic in each detector axis
    g = f + 0.01 * (y - 7) ** 3
    np.testing.assert_allclose(interpolate_across_gap(g, MASKS["cross"], "cubic"), g, rtol=1e-11)


def test_gap_at_array_edge_uses_constant_extrapolation():
    f = ramp(S)
    mask = band_mask(S, cols=[(0, 3)], rows=[(17, 20)])  # left columns, bottom rows
    for kind in ("nearest", "linear", "cubic"):
        got = interpolate_across_gap(f, mask, kind)
        # column band outside the row band: value of column 3, same frame and row
        np.testing.assert_allclose(got[:, :17, :3], np.repeat(f[:, :17, 3:4], 3, axis=2))
        # row band outside the column band: value of row 16
        np.testing.assert_allclose(got[:, 17:, 3:], np.repeat(f[:, 16:17, 3:], 3, axis=1))
        # the corner: extrapolated from the filled arms (distance-weighted), value f(z,16,3)
        np.testing.assert_allclose(got[:, 17:, :3], np.broadcast_to(f[:, 16:17, 3:4], (S[0], 3, 3)))


def test_frames_entirely_missing_fall_back_to_axis0():
    f = ramp(S)
    mask = np.zeros(S, bool)
    mask[4:6] = True  # two whole frames: nothing on the detector axes
    np.testing.assert_allclose(interpolate_across_gap(f, mask, "linear"), f, rtol=1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_random_masks(data):
    shape = (data.draw(st.integers(2, 6)), data.draw(st.integers(3, 9)), data.draw(st.integers(3, 9)))
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < data.draw(st.floats(0.0, 0.6))
    if data.draw(st.booleans()):
        c = rng.integers(0, shape[2])
        mask[:, :, c:c + rng.integers(1, 3)] = True
    if data.draw(st.booleans()):
        r = rng.integers(0, shape[1])
        mask[:, r:r + rng.integers(1, 3), :] = True
    if mask.all():
        mask.flat[0] = False
    counts = rng.poisson(rng.uniform(0, 30), shape).astype(np.float32)
    method = data.draw(st.sampled_from(METHODS))
    out = fill_gap(counts, mask, method, log=data.draw(st.booleans()))
    assert np.array_equal(out[~mask], counts[~mask])
    assert np.isfinite(out).all() and (out >= 0).all()
    if method in ("nearest", "linear", "biharmonic"):  # bounded by the measured range
        assert out[mask].max(initial=0) <= counts[~mask].max() * (1 + 1e-5) + 1e-5


# ----------------------------------------------------------------------------- biharmonic

SK_SHAPE = (24, 24, 24)
SK_MASKS = {
    "vertical band w3": band_mask(SK_SHAPE, cols=[(10, 13)]),
    "cross": band_mask(SK_SHAPE, cols=[(10, 13)], rows=[(4, 8)]),
    "edge cross": band_mask(SK_SHAPE, cols=[(0, 3)], rows=[(22, 24)]),
    "scattered 3D": np.random.default_rng(5).random(SK_SHAPE) < 0.05,
    "scattered detector pixels": np.broadcast_to(np.random.default_rng(6).random(SK_SHAPE[1:]) < 0.05,
                                                 SK_SHAPE).copy(),
    "cross + stray 3D pixels": band_mask(SK_SHAPE, cols=[(10, 13)], rows=[(4, 8)])
    | (np.random.default_rng(7).random(SK_SHAPE) < 0.01),
}


@pytest.fixture(scope="module")
def sk_image():
    return np.log1p(pattern(SK_SHAPE, seed=8).astype(np.float64))


@pytest.mark.parametrize("mask_name", list(SK_MASKS))
def test_biharmonic_matches_skimage(sk_image, mask_name, monkeypatch):
    """Same discretisation as scikit-image: agreement to round-off (observed ~1e-14);
    asserted at 1e-8 of the data range (the CG branch stops at a relative residual 1e-11)."""
    mask = SK_MASKS[mask_name]
    ref = skrest.inpaint_biharmonic(sk_image, mask)
    scale = np.ptp(sk_image)
    got = inpaint_biharmonic(sk_image, mask)
    assert np.abs(got - ref).max() <= 1e-8 * scale
    # through the public entry point (float32 output): float32 round-off
    out = fill_gap(sk_image, mask, "biharmonic", log=False)
    np.testing.assert_allclose(out, ref.astype(np.float32), rtol=1e-6, atol=1e-6 * scale)
    # force the PCG branch for the masks that are not constant along any axis
    monkeypatch.setattr(C, "_LU_MAX_UNKNOWNS", 100)
    got_cg = inpaint_biharmonic(sk_image, mask)
    assert np.abs(got_cg - ref).max() <= 1e-8 * scale


def test_biharmonic_log_mode_matches_skimage_on_log1p():
    counts = pattern(SK_SHAPE, seed=9)
    mask = SK_MASKS["cross"]
    ref = np.expm1(skrest.inpaint_biharmonic(np.log1p(counts.astype(np.float64)), mask))
    out = fill_gap(counts, mask, "biharmonic", log=True)
    np.testing.assert_allclose(out[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_spectral_solver_equals_sparse_solve():
    """The DCT split is exact: compare with a plain sparse solve of the full 3D system."""
    from scipy.sparse.linalg import spsolve

    shape = (16, 30, 28)
    mask = band_mask(shape, cols=[(0, 2), (12, 17)], rows=[(9, 13)])
    rng = np.random.default_rng(10)
    u = rng.random(shape)
    u[mask] = 0
    idx = np.flatnonzero(mask)
    rhs = -C._neumann_laplacian(C._neumann_laplacian(u)).ravel()[idx]
    p_mat, _, _, _ = C._biharmonic_system(shape, idx)
    ref = spsolve(p_mat.tocsc(), rhs)
    got = C._SpectralSolver(mask, C._constant_axes(mask)).solve(rhs)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    # single band: constant along two axes, dense reduced problems
    band = band_mask(shape, cols=[(12, 17)])
    idx = np.flatnonzero(band)
    rhs = rng.random(idx.size)
    p_mat, _, _, _ = C._biharmonic_system(shape, idx)
    solver = C._SpectralSolver(band, C._constant_axes(band))
    assert solver.dense and solver.s_axes == [0, 1]
    np.testing.assert_allclose(p_mat @ solver.solve(rhs), rhs, atol=1e-9)


def test_biharmonic_cross_takes_the_fast_solvers(monkeypatch):
    """Regression guard against the slow path (one 3D sparse LU over the whole gap took
    minutes and GBs here), checked on the path taken rather than on seconds: a cross is
    solved spectrally, and a cross with a stray pixel factorises only small blocks (the
    rest goes to preconditioned CG). Timings: benchmarks/bench_components.py."""
    shape = (96, 96, 96)
    mask = band_mask(shape, cols=[(44, 52)], rows=[(30, 38)])
    counts = pattern(shape, seed=11)
    assert C._constant_axes(mask)                       # spectral solve: small per-mode factors only
    factorised = []
    factor = C._spd_factor
    monkeypatch.setattr(C, "_spd_factor", lambda a: factorised.append(a.shape[0]) or factor(a))
    out = fill_gap(counts, mask, "biharmonic")
    assert np.isfinite(out).all() and all(n <= C._LU_MAX_UNKNOWNS for n in factorised), factorised
    mask[3, 3, 3] = True  # no longer constant along any axis: PCG branch
    assert not C._constant_axes(mask)
    out = fill_gap(counts, mask, "biharmonic")
    assert np.isfinite(out).all()
    assert all(n <= C._LU_MAX_UNKNOWNS for n in factorised), factorised
    np.testing.assert_array_equal(out[~mask], counts[~mask].astype(out.dtype))


# ----------------------------------------------------------------------------- torch

def _windows(n=20, batch=3, seed=12):
    rng = np.random.default_rng(seed)
    vals = np.stack([np.log1p(pattern((n, n, n), seed=seed + b)) for b in range(batch)]).astype(np.float64)
    masks = np.zeros(vals.shape, bool)
    masks[0][5:14, 6:12, 8:11] = True                             # interior hole, off the edges
    masks[1] = band_mask((n, n, n), cols=[(8, 11)], rows=[(3, 6)])  # cross, touches the edges
    masks[2] = rng.random((n, n, n)) < 0.05                       # scattered
    masks[2][:, :, 0:2] = True                                    # + band on the window edge
    return vals, masks


@pytest.mark.parametrize("init", ["linear", "zero"])
def test_torch_matches_scipy_float64(init):
    """Same discretisation, window edges included: agreement to 1e-8 of the data range
    once CG has converged (relative residual 1e-11)."""
    vals, masks = _windows()
    v = torch.from_numpy(vals)[:, None]
    g = torch.from_numpy(masks)[:, None]
    out = biharmonic_fill_torch(v, g, n_iter=3000, tol=1e-11, init=init)
    for b in range(len(vals)):
        ref = inpaint_biharmonic(vals[b], masks[b])
        assert np.abs(out[b, 0].numpy() - ref).max() <= 1e-8 * np.ptp(vals[b])


def test_torch_linear_start_is_the_numpy_linear_fill():
    n = 16
    shape = (n, n, n)
    masks = [band_mask(shape, cols=[(6, 9)], rows=[(2, 4)]),
             band_mask(shape, cols=[(0, 2)], rows=[(13, 16)]),
             np.random.default_rng(13).random(shape) < 0.1]
    vals = np.stack([np.log1p(pattern(shape, seed=30 + b)) for b in range(3)]).astype(np.float64)
    got = P._torch_linear_init(torch.from_numpy(vals)[:, None], torch.from_numpy(np.stack(masks))[:, None])
    for b, mask in enumerate(masks):
        np.testing.assert_allclose(got[b, 0].numpy(), interpolate_across_gap(vals[b], mask, "linear"),
                                   rtol=1e-12, atol=1e-12)


def test_torch_float32_default_tolerance():
    """float32, default tol=1e-4 on the relative residual: within 5e-3 of the data range."""
    n, w = 32, 6
    vals = np.stack([np.log1p(pattern((n, n, n), seed=20 + b)) for b in range(2)]).astype(np.float32)
    mask = band_mask((n, n, n), cols=[(13, 13 + w)], rows=[(5, 5 + w)])
    v = torch.from_numpy(vals)[:, None]
    g = torch.from_numpy(np.broadcast_to(mask, vals.shape).copy())[:, None]
    filled, iters, _ = P._biharmonic_cg_torch(v, g, 1000, 1e-4)
    assert iters <= 200  # ~130 measured for a width-6 cross (linear start)
    out = biharmonic_fill_torch(v, g)
    for b in range(2):
        ref = inpaint_biharmonic(vals[b].astype(np.float64), mask)
        assert np.abs(out[b, 0].double().numpy() - ref).max() <= 5e-3 * np.ptp(vals[b])


def test_torch_measured_untouched_edge_cases_and_validation():
    vals, masks = _windows(n=12, batch=3)
    masks[1] = False   # nothing to fill
    masks[2] = True    # nothing measured
    v = torch.from_numpy(vals).float()[:, None]
    v_dirty = v.clone()
    g = torch.from_numpy(masks)[:, None]
    v_dirty[g] = float("nan")
    before = v_dirty.clone()
    out = biharmonic_fill_torch(v_dirty, g, n_iter=50)
    assert torch.equal(torch.isnan(v_dirty), torch.isnan(before))  # input untouched
    assert torch.equal(out[~g], v[~g])
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], v[1]) and (out[2] == 0).all()
    filled = out[0][g[0]]
    known = v[0][~g[0]]
    assert filled.min() >= known.min() and filled.max() <= known.max()  # clipped like skimage
    with pytest.raises(ValueError, match="shape"):
        biharmonic_fill_torch(v[:, 0], g[:, 0])
    with pytest.raises(ValueError, match="bool"):
        biharmonic_fill_torch(v, g.float())
    with pytest.raises(ValueError, match="floating"):
        biharmonic_fill_torch(v.long(), g)
