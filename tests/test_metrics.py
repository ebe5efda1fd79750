"""Tests of the real-space metrics (alignment, strain, comparisons) and of eq. 1 (pcc_gap)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage

from bcdi_gapfill.core import metrics as M


def _grid(shape):
    return np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")


def _particle(shape=(32, 32, 32), radii=(8, 6, 7), phase=True):
    """Smooth-edged ellipsoid with a phase that has both even and odd parts (so the twin
    differs from the object)."""
    z, y, x = _grid(shape)
    r = np.sqrt((z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2)
    mod = ndimage.gaussian_filter((r < 1).astype(float), 1.0)
    ph = (0.8 * np.sin(z / 5 + 0.3) + 0.4 * (y / 8) ** 2 + 0.3 * x / 8) if phase else np.zeros(shape)
    return (mod * np.exp(1j * ph)).astype(np.complex64), mod > 0.3


def _cfft(a):
    return sfft.fftshift(sfft.fftn(sfft.ifftshift(a)))


def _ramp(shape, k):
    return np.exp(2j * np.pi * sum(kd * c / n for kd, c, n in zip(k, _grid(shape), shape)))


def _fshift(a, s):
    return sfft.ifftn(ndimage.fourier_shift(sfft.fftn(a), s))


# ------------------------------------------------------------------------------- twin
@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 17, 16), (9, 10)])
def test_twin_has_the_conjugate_amplitude_and_is_an_involution(shape):
    rng = np.random.default_rng(0)
    obj = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    tw = M.twin(obj)
    # conj(obj(-r)) <-> conj(A(q)) only with the inversion centre at n // 2: the same
    # intensity and no spurious one-voxel shift (which |A| alone would not reveal).
    np.testing.assert_allclose(_cfft(tw), np.conj(_cfft(obj)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(M.twin(tw), obj)
    assert not np.allclose(tw, obj)


# -------------------------------------------------------------------------- alignment
def test_align_integer_shift_twin_offset_and_ramp_to_float_precision():
    ref, sup = _particle()
    moved = np.roll(ref, (2, -3, 1), axis=(0, 1, 2)) * _ramp(ref.shape, (1, 0, -2)) * np.exp(1.3j)
    moved = M.twin(moved).astype(np.complex64)
    aligned, params = M.align_to_reference(moved, ref, sup, return_params=True)
    assert aligned.dtype == np.complex64 and aligned.shape == ref.shape
    assert params["twin"] is True
    assert np.abs(aligned - ref).max() < 1e-5 * np.abs(ref).max()
    assert params["overlap"] > 1 - 1e-6


def test_align_does_not_twin_a_plain_copy():
    ref, sup = _particle()
    aligned, params = M.align_to_reference(np.roll(ref, 3, axis=2) * np.exp(-2.0j), ref, return_params=True)
    assert params["twin"] is False
    np.testing.assert_allclose(params["shift"], [0, 0, -3], atol=1e-9)
    assert np.abs(aligned - ref).max() < 1e-5


def test_align_subvoxel_shift_and_ramp():
    ref, sup = _particle()
    moved = _fshift(ref, (0.37, -0.23, 0.41)) * _ramp(ref.shape, (0.3, -0.22, 0.15)) * np.exp(2.5j)
    aligned, params = M.align_to_reference(M.twin(moved), ref, sup, upsample_factor=50, return_params=True)
    assert params["twin"] is True
    rel = np.linalg.norm(aligned - ref) / np.linalg.norm(ref)
    assert rel < 0.02
    # Without alignment the copies are far apart: the test measures the alignment.
    assert np.linalg.norm(moved - ref) / np.linalg.norm(ref) > 0.5


def test_align_without_ramp_removal_keeps_the_linear_phase():
    # Zero phase: with a curved phase a ramp is partly equivalent to a shift of the curvature.
    ref, sup = _particle(phase=False)
    k = (0.0, 0.4, 0.0)
    moved = np.roll(ref * _ramp(ref.shape, k), 2, axis=0)
    kept = M.align_to_reference(moved, ref, sup, remove_ramp=False)
    removed = M.align_to_reference(moved, ref, sup)
    assert np.abs(removed - ref).max() < 1e-4
    # What is left is the ramp itself (up to a constant phase): a uniform strain.
    dphi = np.angle(kept * np.conj(ref))[sup]
    y = _grid(ref.shape)[1][sup]
    slope = np.polyfit(y, dphi, 1)[0]
    assert slope == pytest.approx(2 * np.pi * k[1] / ref.shape[1], rel=1e-3)


def test_align_validates_inputs():
    ref, sup = _particle((16, 16, 16), (4, 3, 3))
    with pytest.raises(ValueError, match="same shape"):
        M.align_to_reference(ref[:-1], ref)
    with pytest.raises(ValueError, match="support is empty"):
        M.align_to_reference(ref, ref, np.zeros(ref.shape, bool))
    with pytest.raises(ValueError, match="support must have shape"):
        M.align_to_reference(ref, ref, sup[:-1])


# ------------------------------------------------------------------- phase and strain
def test_bragg_q_and_displacement_for_pt_111():
    q = M.bragg_q()
    assert q == pytest.approx(2 * np.pi * np.sqrt(3) / 3.924e-10)
    assert 2 * np.pi / q == pytest.approx(3.924e-10 / np.sqrt(3))  # d111 = 2.266 A
    # Paper section 2.6: a phase error of 0.2 rad is about 7 pm of displacement for Pt 111.
    u = M.displacement(np.array([0.2, -0.2]), q)
    np.testing.assert_allclose(u, [7.21e-12, -7.21e-12], rtol=2e-3)
    assert M.bragg_q((2, 0, 0)) == pytest.approx(4 * np.pi / 3.924e-10)
    np.testing.assert_allclose(M.displacement(np.ones(2), [0, q, 0]), 1 / q)
    with pytest.raises(ValueError):
        M.bragg_q((0, 0, 0))
    with pytest.raises(ValueError):
        M.displacement(np.ones(2), 0.0)


def test_strain_of_a_linear_displacement_is_uniform_up_to_the_surface():
    shape = (20, 22, 24)
    _, sup = _particle(shape, (7, 8, 9), phase=False)
    voxel = (5e-9, 4e-9, 3e-9)
    eps = 2.5e-3
    z, y, x = (c * v for c, v in zip(_grid(shape), voxel))
    u = np.where(sup, eps * z, 1e3)  # garbage outside: must not leak into the surface voxels
    s = M.strain(u, voxel, axis=0, support=sup)
    # NaN only where a support voxel has no support neighbour along the axis.
    lonely = sup & ~np.roll(sup, 1, axis=0) & ~np.roll(sup, -1, axis=0)
    np.testing.assert_array_equal(np.isnan(s), ~sup | lonely)
    assert lonely.sum() < 0.01 * sup.sum()
    np.testing.assert_allclose(s[sup & ~lonely], eps, rtol=1e-9)
    # Along a general direction g in the array frame: u = eps * (r . g_hat).
    g = np.array([1.0, 2.0, -1.0])
    gh = g / np.linalg.norm(g)
    u = eps * (z * gh[0] + y * gh[1] + x * gh[2])
    s = M.strain(np.where(sup, u, np.nan), voxel, axis=g)
    np.testing.assert_allclose(s[sup & ~lonely], eps, rtol=1e-9)
    # A displacement along axis 1 has no strain along axis 0.
    np.testing.assert_allclose(M.strain(eps * y, voxel, axis=0, support=sup)[sup & ~lonely], 0, atol=1e-15)


def test_strain_without_support_matches_numpy_gradient():
    rng = np.random.default_rng(1)
    u = rng.normal(size=(6, 7, 8))
    np.testing.assert_allclose(M.strain(u, 2.0, axis=1), np.gradient(u, 2.0, axis=1))


def test_unwrapped_phase_gives_back_the_strain_of_a_wrapped_ramp():
    shape = (24, 24, 24)
    obj, sup = _particle(shape, (8, 8, 8), phase=False)
    q = M.bragg_q()
    voxel = 6e-9
    eps = 6e-3  # about 1 rad per voxel: unwrappable, and several turns across the particle
    # Phase G.u with u = eps * z.
    phase_true = q * eps * _grid(shape)[0] * voxel
    assert np.ptp(phase_true[sup]) > 4 * np.pi
    wrapped = np.angle(np.exp(1j * phase_true))
    un = M.unwrap_phase(wrapped, sup)
    assert np.isnan(un[~sup]).all()
    np.testing.assert_allclose(np.diff(un, axis=0)[sup[1:] & sup[:-1]], q * eps * voxel, rtol=1e-6)
    s = M.strain(M.displacement(un, q), voxel, 0, support=sup)
    finite = np.isfinite(s) & sup
    assert finite.sum() > 0.99 * sup.sum()
    np.testing.assert_allclose(s[finite], eps, rtol=1e-6)
    # Complex input: the angle is taken.
    np.testing.assert_allclose(M.unwrap_phase(np.exp(1j * wrapped), sup)[sup], un[sup])


def test_support_from_modulus():
    obj, sup = _particle()
    s = M.support_from_modulus(obj, 0.3)
    np.testing.assert_array_equal(s, np.abs(obj) > 0.3 * np.abs(obj).max())
    assert M.support_from_modulus(obj, 0.3, sigma=2).sum() != s.sum()
    with pytest.raises(ValueError):
        M.support_from_modulus(obj, 1.5)


# ------------------------------------------------------------------------ comparisons
def test_phase_std_ignores_offset_and_wraps_but_not_noise():
    rng = np.random.default_rng(2)
    sup = np.ones((10, 10, 10), bool)
    truth = rng.uniform(-np.pi, np.pi, sup.shape)
    noise = rng.normal(0, 0.1, sup.shape)
    # Offset near pi: a naive difference would wrap for about half the voxels.
    rec = np.angle(np.exp(1j * (truth + 3.1 + noise)))
    assert M.phase_std(rec, truth, sup) == pytest.approx(np.std(noise), rel=0.02)
    assert M.phase_std(truth + 1.0, truth, sup) == pytest.approx(0, abs=1e-12)


def test_strain_rmse_and_mean_strain_inside_support_only():
    sup = np.zeros((4, 4), bool)
    sup[1:3, 1:3] = True
    s_true = np.zeros((4, 4))
    s = np.full((4, 4), 5.0)
    s[sup] = [1e-3, -1e-3, 1e-3, np.nan]
    assert M.strain_rmse(s, s_true, sup) == pytest.approx(1e-3)
    assert M.mean_strain(s, sup) == pytest.approx(1e-3 / 3)
    with pytest.raises(ValueError):
        M.strain_rmse(s, s_true[:3], sup)


def test_spurious_modulus():
    obj = np.zeros((12, 12, 12), complex)
    sup = np.zeros(obj.shape, bool)
    sup[4:8, 4:8, 4:8] = True
    obj[sup] = 1.0
    obj[0, 0, 0] = 2.0  # far outside: 4 / (64 + 4)
    obj[3, 5, 5] = 3.0  # one voxel outside: inside the 1-voxel dilation
    assert M.spurious_modulus(obj, sup) == pytest.approx(4 / (64 + 4 + 9))
    assert M.spurious_modulus(obj, sup, dilation=0) == pytest.approx(13 / (64 + 4 + 9))


# ------------------------------------------------------------------------------ pcc
def test_pcc_gap_identical_known_value_and_batch():
    rng = np.random.default_rng(3)
    truth = rng.poisson(20, (5, 8, 8, 8)).astype(np.float32)
    pred = truth + rng.normal(0, 3, truth.shape).clip(0)
    gap = np.zeros((8, 8, 8), bool)
    gap[:, 3:5, :] = True
    assert M.pcc_gap(truth[0], truth[0], gap) == pytest.approx(1.0)
    batch = M.pcc_gap(truth, pred, gap)
    assert batch.shape == (5,)
    for i in range(5):
        ref = np.corrcoef(np.log1p(truth[i][gap].astype(float)), np.log1p(pred[i][gap]))[0, 1]
        assert batch[i] == pytest.approx(ref, rel=1e-10)
        assert M.pcc_gap(truth[i], pred[i], gap) == pytest.approx(ref, rel=1e-10)
    lin = M.pcc_gap(truth, pred, gap, log=False, chunk=2)
    assert lin[1] == pytest.approx(np.corrcoef(truth[1][gap].astype(float), pred[1][gap])[0, 1], rel=1e-10)
    assert not np.allclose(lin, batch)


def test_pcc_gap_per_sample_masks_and_degenerate_cases():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0, 100, (3, 6, 6, 6))
    pred = rng.uniform(0, 100, truth.shape)
    gaps = np.zeros(truth.shape, bool)
    gaps[0, :, 1:3] = True
    gaps[1, :, :, 4] = True
    gaps[2, 2] = True
    out = M.pcc_gap(truth, pred, gaps)
    for i in range(3):
        ref = np.corrcoef(np.log1p(truth[i][gaps[i]]), np.log1p(pred[i][gaps[i]]))[0, 1]
        assert out[i] == pytest.approx(ref, rel=1e-10)
    flat = np.ones((6, 6, 6))
    assert np.isnan(M.pcc_gap(flat, truth[0], gaps[0]))
    with pytest.raises(ValueError, match="selects no voxel"):
        M.pcc_gap(truth, pred, np.zeros((6, 6, 6), bool))
    with pytest.raises(ValueError, match="non-negative"):
        M.pcc_gap(-truth, pred, gaps)
    with pytest.raises(ValueError, match="shapes differ"):
        M.pcc_gap(truth, pred[:2], gaps)


# ----------------------------------------------------------------------------- report
def test_real_space_report_detects_gap_artefacts():
    """The paper's Fig. 7 mechanism: zeroing a cross-shaped gap in the amplitude of a
    zero-phase particle puts density outside it and phase/strain errors inside."""
    obj, sup = _particle((32, 32, 32), (9, 7, 8), phase=False)
    q = M.bragg_q()
    voxel = 5e-9
    clean = M.real_space_report(M.twin(np.roll(obj, 2, axis=1)), obj, sup, q, voxel)
    assert clean["overlap"] > 1 - 1e-6
    assert clean["phase_std"] < 1e-5 and clean["strain_rmse"] < 1e-9
    assert abs(clean["mean_strain"]) < 1e-9 and clean["mean_strain_true"] == pytest.approx(0, abs=1e-12)
    amp = _cfft(obj)
    gap = np.zeros(obj.shape, bool)
    gap[:, 17:21, :] = True  # a gap near the Bragg peak, off-centre
    gap[:, :, 13:16] = True
    gapped = sfft.fftshift(sfft.ifftn(sfft.ifftshift(np.where(gap, 0, amp))))
    bad = M.real_space_report(gapped, obj, sup, [q, 0, 0], (voxel, voxel, voxel))
    assert bad["phase_std"] > 0.01
    assert bad["strain_rmse"] > 1e-4
    assert bad["spurious_modulus"] > clean["spurious_modulus"] + 0.01
    assert set(bad) == {"strain_rmse", "phase_std", "mean_strain", "mean_strain_true", "strain_std",
                        "spurious_modulus", "overlap"}


def test_poisson_deviance():
    from bcdi_gapfill.core.metrics import poisson_deviance
    counts = np.array([[[0.0, 1.0, 4.0, 10.0]]])
    mask = np.ones(counts.shape, bool)
    assert poisson_deviance(counts, counts, mask) == pytest.approx(0.0, abs=1e-5)   # the 1e-6 floor at c = 0
    # By hand: 2 * (c log(c/p) - (c - p)) at p = 2: 4, 2(log(1/2)+1), 2(4 log 2 - 2), 2(10 log 5 - 8)
    expected = np.mean([4.0, 2 * (np.log(0.5) + 1), 2 * (4 * np.log(2) - 2), 2 * (10 * np.log(5) - 8)])
    assert poisson_deviance(counts, np.full(counts.shape, 2.0), mask) == pytest.approx(expected)
    only = np.array([[[False, False, True, False]]])
    assert poisson_deviance(counts, np.full(counts.shape, 2.0), only) == pytest.approx(2 * (4 * np.log(2) - 2))
    assert np.isfinite(poisson_deviance(counts, np.zeros(counts.shape), mask))   # floored prediction
    with pytest.raises(ValueError, match="selects no voxel"):
        poisson_deviance(counts, counts, np.zeros(counts.shape, bool))
    with pytest.raises(ValueError, match=">= 0"):
        poisson_deviance(-counts - 1, counts, mask)


def test_diffracted_intensity_is_the_unitary_centred_transform():
    from bcdi_gapfill.core.metrics import diffracted_intensity
    obj = np.zeros((8, 8, 8), complex)
    obj[4, 4, 4] = 2.0                        # a point at the centre: a flat pattern
    intensity = diffracted_intensity(obj)
    np.testing.assert_allclose(intensity, 4.0 / 8 ** 3)
    rng = np.random.default_rng(0)
    obj = rng.normal(size=(6, 8, 10)) + 1j * rng.normal(size=(6, 8, 10))
    assert diffracted_intensity(obj).sum() == pytest.approx((np.abs(obj) ** 2).sum())   # Parseval
