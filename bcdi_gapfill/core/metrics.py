"""Real-space analysis of reconstructed BCDI objects, and the in-gap accuracy of eq. 1.

These are the measurements of the paper's section 2.6 and supplement S7: a reconstruction
from gapped, inpainted or complete data is put in the frame of a reference object
(:func:`align_to_reference`), its phase turned into a displacement and a strain
(:func:`displacement`, :func:`strain`), and compared with the reference
(:func:`strain_rmse`, :func:`phase_std`, :func:`mean_strain`, :func:`spurious_modulus`,
all gathered by :func:`real_space_report`). :func:`pcc_gap` is the reciprocal-space
accuracy of the paper's equation 1, batched for the evaluation on many portions.

Conventions
-----------
* Arrays are (frames, rows, columns), as in bcdi; objects are complex and centred in the
  array (the same "peak at the centre" convention as the intensities, i.e. the object is
  ``fftshift(ifftn(ifftshift(amplitude)))``). Every function also accepts 2D arrays.
* The displacement is ``u = phase / |G|`` (bcdi's convention, object ``~ exp(+i G.u)``).
  With a forward FFT ``exp(-i q.r)`` from object to amplitude the physical sign is
  ``phase = -G.u`` (Carnis et al. 2019), so real data may need the twin object; for the
  comparisons here only the consistency between reconstruction and reference matters.
* The strain is the derivative of ``u`` along the direction of ``G`` expressed in the array
  frame. The default is ``G`` along array axis 0; pass a vector for any other direction.
  Lengths are in metres, ``|G|`` in 1/m, phases in radians.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.fft as sfft
from scipy import ndimage
from skimage.registration import phase_cross_correlation
from skimage.restoration import unwrap_phase as _sk_unwrap_phase

__all__ = [
    "align_to_reference", "twin", "support_from_modulus", "unwrap_phase", "displacement",
    "strain", "bragg_q", "strain_rmse", "phase_std", "mean_strain", "spurious_modulus",
    "pcc_gap", "poisson_deviance", "diffracted_intensity", "real_space_report", "truth_support",
    "PT_LATTICE_CONSTANT",
]

#: Lattice constant of platinum at room temperature, in metres.
PT_LATTICE_CONSTANT = 3.924e-10


# ----------------------------------------------------------------------------- helpers
def _as_complex(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim < 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty array, got shape {arr.shape}")
    if not (np.iscomplexobj(arr) or np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {m.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number):
            raise TypeError(f"{name} must be boolean or 0/1 numbers, got dtype {m.dtype}")
        m = m != 0
    return m


def _centred_fft(a: np.ndarray) -> np.ndarray:
    return sfft.fftshift(sfft.fftn(sfft.ifftshift(a), workers=-1))


def _centred_coords(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Voxel coordinates relative to the array centre ``n // 2``, broadcastable (sparse)."""
    return np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij", sparse=True)


def _fourier_shift(a: np.ndarray, shift: Sequence[float]) -> np.ndarray:
    """Periodic sub-voxel translation by ``shift`` voxels (positive moves content up)."""
    if not np.any(shift):
        return a
    return sfft.ifftn(ndimage.fourier_shift(sfft.fftn(a, workers=-1), shift), workers=-1)


def _ramp(shape: tuple[int, ...], k: Sequence[float]) -> np.ndarray:
    """``exp(2 pi i sum_d k_d r_d / N_d)``: multiplying by it moves the FT by +k voxels."""
    phase = sum(2 * np.pi * kd * rd / n for kd, rd, n in zip(k, _centred_coords(shape), shape))
    return np.exp(1j * phase)


def twin(obj: np.ndarray) -> np.ndarray:
    """The twin image ``conj(obj(-r))``, which has exactly the same diffracted intensity.

    Parameters
    ----------
    obj : ndarray, complex, shape (frames, rows, columns) or any N-D shape
        Centred object (centre at index ``n // 2`` along each axis).

    Returns
    -------
    ndarray, same shape and dtype
        The point-inverted complex conjugate. Inversion about index ``n // 2`` is a flip for
        odd sizes and a flip followed by a one-voxel roll for even sizes.
    """
    out = np.conj(np.flip(np.asarray(obj)))
    even_axes = tuple(ax for ax, n in enumerate(out.shape) if n % 2 == 0)
    if even_axes:
        out = np.roll(out, 1, axis=even_axes)
    return out


# --------------------------------------------------------------------------- alignment
def align_to_reference(obj: np.ndarray, reference: np.ndarray, support: np.ndarray | None = None, *,
                       upsample_factor: int = 20, allow_twin: bool = True, remove_ramp: bool = True,
                       return_params: bool = False) -> np.ndarray | tuple[np.ndarray, dict]:
    """Put a reconstruction in the frame of a reference object, up to CDI's ambiguities.

    A diffraction pattern determines its object only up to a global phase, a translation,
    the twin ``conj(obj(-r))`` and (when the pattern is not re-centred) a linear phase ramp.
    They are resolved in this order:

    1. phase ramp: the shift between the two Fourier moduli (a real-space ramp moves the
       Bragg peak, a translation does not change the modulus), registered with sub-voxel
       precision; skipped with ``remove_ramp=False``;
    2. twin and translation: for ``obj`` and its twin, the complex cross-correlation peak
       with the reference (sub-voxel, upsampled) gives the shift, applied as a Fourier
       shift; the candidate with the larger normalised overlap wins;
    3. global phase: the modulus-weighted circular mean of the phase difference in
       ``support``;
    4. residual linear phase (only with ``remove_ramp``): a modulus-weighted least-squares
       plane fitted to the remaining phase difference in ``support``.

    Parameters
    ----------
    obj, reference : ndarray, complex, shape (frames, rows, columns) (2D also accepted)
        Centred objects of equal shape. Translations are periodic (Fourier shift).
    support : ndarray of bool, same shape, optional
        Where the phase comparison is made (reference frame). Default:
        ``support_from_modulus(reference, 0.3)``.
    upsample_factor : int
        Sub-voxel precision of the registrations is ``1 / upsample_factor`` voxel.
    allow_twin : bool
        Consider the twin image (turn off for data where the twin is already fixed).
    remove_ramp : bool
        Remove the linear phase difference. A uniform strain is a linear phase, so keep it
        (False) when the mean strain of the reconstruction is itself to be measured.
    return_params : bool
        Also return a dict with ``twin`` (bool), ``ramp`` (Fourier-peak shift removed, voxels),
        ``shift`` (translation applied, voxels), ``phase_offset`` (rad) and ``overlap``
        (normalised ``|<reference, aligned>|`` in [0, 1]).

    Returns
    -------
    aligned : ndarray, same shape and dtype as ``obj`` (complex)
    params : dict, only when ``return_params``
    """
    obj = _as_complex(obj, "obj")
    reference = _as_complex(reference, "reference")
    if obj.shape != reference.shape:
        raise ValueError(f"obj and reference must have the same shape, got {obj.shape} and {reference.shape}")
    if int(upsample_factor) < 1:
        raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
    out_dtype = np.result_type(obj.dtype, np.complex64)
    ref = reference.astype(np.complex128)
    if support is None:
        sup = support_from_modulus(ref, 0.3)
    else:
        sup = _as_mask(support, obj.shape, "support")
    if not sup.any():
        raise ValueError("support is empty: nothing to compare the phases on")
    ref_norm = np.linalg.norm(ref)
    if ref_norm == 0 or not np.any(obj):
        raise ValueError("obj and reference must not be identically zero")

    moving = obj.astype(np.complex128)
    k = np.zeros(obj.ndim)
    if remove_ramp:
        # The twin has the same Fourier modulus and twin(o * ramp) = twin(o) * ramp, so one
        # registration serves both candidates.
        k, _, _ = phase_cross_correlation(np.abs(_centred_fft(ref)), np.abs(_centred_fft(moving)),
                                          upsample_factor=upsample_factor, normalization=None)
        moving = moving * _ramp(obj.shape, k)
    best: tuple[float, np.ndarray, dict] | None = None
    candidates = [(False, moving)] + ([(True, twin(moving))] if allow_twin else [])
    for is_twin, cand in candidates:
        # Plain (not phase-normalised) correlation: robust when the two objects differ in
        # detail, as a reconstruction and its ground truth do.
        shift, _, _ = phase_cross_correlation(ref, cand, upsample_factor=upsample_factor,
                                              normalization=None)
        cand = _fourier_shift(cand, shift)
        overlap = abs(np.vdot(ref, cand)) / (ref_norm * np.linalg.norm(cand))
        if best is None or overlap > best[0]:
            best = (overlap, cand, {"twin": is_twin, "ramp": np.asarray(k, float),
                                    "shift": np.asarray(shift, float)})
    overlap, aligned, params = best

    # sum(aligned * conj(ref)) is the circular mean of the phase difference weighted by
    # |aligned| |ref|: it ignores 2 pi wraps and the noisy phase of weak voxels.
    cross = aligned * np.conj(ref)
    offset = float(np.angle(np.sum(cross[sup])))
    aligned = aligned * np.exp(-1j * offset)
    if remove_ramp:
        # After step 1 the residual is a small fraction of a fringe, so the wrapped phase
        # difference needs no unwrapping for the fit.
        dphi = np.angle(aligned * np.conj(ref))[sup]
        w = np.sqrt(np.abs(cross[sup]))
        coords = [np.broadcast_to(c, obj.shape)[sup] for c in _centred_coords(obj.shape)]
        design = np.stack([np.ones_like(dphi), *coords], axis=1)
        coef, *_ = np.linalg.lstsq(design * w[:, None], dphi * w, rcond=None)
        plane = coef[0] + sum(c * r for c, r in zip(coef[1:], _centred_coords(obj.shape)))
        aligned = aligned * np.exp(-1j * plane)
        offset += float(coef[0])
        params["ramp"] = params["ramp"] - np.asarray(coef[1:]) * np.array(obj.shape) / (2 * np.pi)
    params["phase_offset"] = float(np.angle(np.exp(1j * offset)))
    params["overlap"] = float(abs(np.vdot(ref, aligned)) / (ref_norm * np.linalg.norm(aligned)))
    aligned = aligned.astype(out_dtype, copy=False)
    return (aligned, params) if return_params else aligned


# ------------------------------------------------------------------- phase and strain
def support_from_modulus(obj: np.ndarray, threshold: float = 0.3, *, sigma: float = 0.0) -> np.ndarray:
    """Support as the voxels whose modulus exceeds ``threshold`` times the maximum.

    Parameters
    ----------
    obj : ndarray, complex or real, any shape
    threshold : float in [0, 1)
        Relative to the maximum of the (optionally smoothed) modulus.
    sigma : float
        Gaussian smoothing of the modulus before thresholding, in voxels (0: none).

    Returns
    -------
    ndarray of bool, same shape
    """
    obj = _as_complex(obj, "obj")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    mod = np.abs(obj).astype(np.float64)
    if sigma > 0:
        mod = ndimage.gaussian_filter(mod, sigma)
    return mod > threshold * mod.max()


def unwrap_phase(phase: np.ndarray, support: np.ndarray | None = None, *, seed: int | None = 0) -> np.ndarray:
    """Unwrap a 2D/3D phase map, optionally only inside a support.

    Parameters
    ----------
    phase : ndarray, real (radians) or complex (its angle is used), 2D or 3D
    support : ndarray of bool, same shape, optional
        Voxels outside are ignored by the unwrapping and set to NaN in the output.
    seed : int or None
        Seed of scikit-image's reliability-ordered unwrapping (ties are broken randomly).

    Returns
    -------
    ndarray, float64, same shape
        Unwrapped phase, shifted by a multiple of 2 pi so that its median over the support
        lies in [-pi, pi).
    """
    phase = _as_complex(phase, "phase")
    if np.iscomplexobj(phase):
        phase = np.angle(phase)
    if phase.ndim not in (2, 3):
        raise ValueError(f"phase must be 2D or 3D, got {phase.ndim}D")
    phase = phase.astype(np.float64)
    if support is None:
        out = _sk_unwrap_phase(phase, rng=seed)
        inside = np.ones(phase.shape, bool)
    else:
        inside = _as_mask(support, phase.shape, "support")
        if not inside.any():
            raise ValueError("support is empty")
        out = _sk_unwrap_phase(np.ma.masked_array(phase, mask=~inside), rng=seed)
        out = np.where(inside, np.ma.getdata(out), np.nan)
    out -= 2 * np.pi * np.round(np.median(out[inside]) / (2 * np.pi))
    return out


def bragg_q(hkl: Sequence[int] = (1, 1, 1), a: float = PT_LATTICE_CONSTANT) -> float:
    """Norm of the reciprocal lattice vector of a cubic crystal, ``2 pi sqrt(h2+k2+l2) / a``.

    Parameters
    ----------
    hkl : three integers
        Miller indices (default Pt 111).
    a : float
        Cubic lattice constant, metres (default Pt, 3.924 Angstrom).

    Returns
    -------
    float
        ``|G|`` in 1/m (Pt 111: 2.773e10 1/m, i.e. d111 = 2.266 Angstrom).
    """
    hkl = np.asarray(hkl)
    if hkl.shape != (3,) or not np.all(np.equal(np.mod(hkl, 1), 0)) or not np.any(hkl):
        raise ValueError(f"hkl must be three integers, not all zero, got {hkl!r}")
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"lattice constant a must be positive (metres), got {a}")
    return float(2 * np.pi * np.sqrt(np.sum(hkl.astype(float) ** 2)) / a)


def displacement(phase: np.ndarray, q_norm: float | Sequence[float]) -> np.ndarray:
    """Projection of the displacement field on ``G``: ``u = phase / |G|``.

    Parameters
    ----------
    phase : ndarray, float, radians (unwrapped, NaN allowed outside the support)
    q_norm : float or vector
        ``|G|`` in 1/m, or ``G`` itself (its norm is used).

    Returns
    -------
    ndarray, float64, same shape: displacement in metres.
    """
    q = np.asarray(q_norm, dtype=float)
    qn = float(np.linalg.norm(q)) if q.ndim else float(q)
    if not (np.isfinite(qn) and qn > 0):
        raise ValueError(f"q_norm must be a positive finite |G| in 1/m, got {q_norm!r}")
    phase = np.asarray(phase)
    if np.iscomplexobj(phase):
        raise TypeError("phase must be real (radians); use np.angle or unwrap_phase first")
    return phase.astype(np.float64) / qn


def _voxel_sizes(voxel_size: float | Sequence[float], ndim: int) -> np.ndarray:
    v = np.asarray(voxel_size, dtype=float)
    v = np.full(ndim, float(v)) if v.ndim == 0 else v
    if v.shape != (ndim,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"voxel_size must be a positive number or {ndim} positive numbers (metres), "
                         f"got {voxel_size!r}")
    return v


def _masked_derivative(u: np.ndarray, valid: np.ndarray, axis: int, step: float) -> np.ndarray:
    """du/dx along ``axis``: central difference inside, one-sided at the support surface.

    A difference is only used when both its voxels are valid, so values outside the
    support never leak in; a voxel with no valid neighbour along the axis gets NaN.
    """
    lo = [slice(None)] * u.ndim
    hi = [slice(None)] * u.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    lo, hi = tuple(lo), tuple(hi)
    ok = valid[lo] & valid[hi]
    diff = np.where(ok, (np.where(ok, u[hi], 0) - np.where(ok, u[lo], 0)) / step, 0.0)
    total = np.zeros(u.shape)
    count = np.zeros(u.shape)
    total[lo] += diff
    count[lo] += ok
    total[hi] += diff
    count[hi] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def strain(displacement: np.ndarray, voxel_size: float | Sequence[float],
           axis: int | Sequence[float] = 0, *, support: np.ndarray | None = None) -> np.ndarray:
    """Strain along ``G``: the derivative of ``u`` along the direction of ``G``.

    Parameters
    ----------
    displacement : ndarray, float, metres, shape (frames, rows, columns) (any N-D)
        NaN voxels are treated as outside the support.
    voxel_size : float or sequence of floats
        Voxel size in metres, one value or one per axis.
    axis : int or vector of length ndim
        Direction of ``G`` in the array frame: an axis index (default 0, bcdi's frame axis)
        or a vector (normalised here), giving ``sum_i g_i du/dx_i``.
    support : ndarray of bool, same shape, optional
        Differences only use voxels inside; surface voxels use one-sided differences.

    Returns
    -------
    ndarray, float64, same shape: dimensionless strain, NaN outside the support.
    """
    u = np.asarray(displacement)
    if np.iscomplexobj(u) or not np.issubdtype(u.dtype, np.number):
        raise TypeError("displacement must be a real array (metres)")
    u = u.astype(np.float64)
    steps = _voxel_sizes(voxel_size, u.ndim)
    if np.ndim(axis) == 0:
        ax = int(axis)
        if not -u.ndim <= ax < u.ndim:
            raise ValueError(f"axis {axis} out of range for a {u.ndim}D array")
        g = np.zeros(u.ndim)
        g[ax] = 1.0
    else:
        g = np.asarray(axis, dtype=float)
        if g.shape != (u.ndim,) or not np.all(np.isfinite(g)) or not np.any(g):
            raise ValueError(f"axis must be an int or a non-zero vector of length {u.ndim}, got {axis!r}")
        g = g / np.linalg.norm(g)
    valid = np.isfinite(u)
    if support is not None:
        valid &= _as_mask(support, u.shape, "support")
    out = np.zeros(u.shape)
    for i in np.flatnonzero(g):
        out += g[i] * _masked_derivative(u, valid, i, steps[i])
    out[~valid] = np.nan
    return out


# ------------------------------------------------------------------------ comparisons
def _support_values(support: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    sup = _as_mask(support, shape, "support")
    if not sup.any():
        raise ValueError("support is empty")
    return sup


def strain_rmse(strain: np.ndarray, strain_true: np.ndarray, support: np.ndarray) -> float:
    """Root-mean-square strain error over the support voxels where both strains are finite.

    Parameters
    ----------
    strain, strain_true : ndarray, float, same shape (dimensionless)
    support : ndarray of bool, same shape

    Returns
    -------
    float
    """
    s = np.asarray(strain, dtype=np.float64)
    t = np.asarray(strain_true, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"strain and strain_true shapes differ: {s.shape} vs {t.shape}")
    sel = _support_values(support, s.shape) & np.isfinite(s) & np.isfinite(t)
    if not sel.any():
        raise ValueError("no support voxel has a finite strain in both arrays")
    return float(np.sqrt(np.mean((s[sel] - t[sel]) ** 2)))


def phase_std(phase: np.ndarray, phase_true: np.ndarray, support: np.ndarray) -> float:
    """Standard deviation of the phase difference inside the support, after removing its mean.

    The difference is taken on the circle (wrapped about its circular mean), so neither a
    global offset nor 2 pi jumps between the two maps count.

    Parameters
    ----------
    phase, phase_true : ndarray, float, radians, same shape
    support : ndarray of bool, same shape

    Returns
    -------
    float, radians
    """
    p = np.asarray(phase, dtype=np.float64)
    t = np.asarray(phase_true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"phase and phase_true shapes differ: {p.shape} vs {t.shape}")
    sel = _support_values(support, p.shape) & np.isfinite(p) & np.isfinite(t)
    if not sel.any():
        raise ValueError("no support voxel has a finite phase in both arrays")
    z = np.exp(1j * (p[sel] - t[sel]))
    d = np.angle(z * np.conj(np.mean(z)) / max(abs(np.mean(z)), 1e-300))
    return float(np.std(d))


def mean_strain(strain: np.ndarray, support: np.ndarray) -> float:
    """Mean of the finite strain values inside the support (dimensionless)."""
    s = np.asarray(strain, dtype=np.float64)
    sel = _support_values(support, s.shape) & np.isfinite(s)
    if not sel.any():
        raise ValueError("no finite strain value inside the support")
    return float(np.mean(s[sel]))


def spurious_modulus(obj: np.ndarray, support: np.ndarray, *, dilation: int = 1) -> float:
    """Fraction of ``|obj|**2`` that lies outside the (dilated) true support.

    Gap artefacts put density outside the particle along the directions normal to the gap
    planes (paper Fig. 7c); this is their share of the total.

    Parameters
    ----------
    obj : ndarray, complex, any shape
    support : ndarray of bool, same shape
        The true support, in the frame of ``obj`` (align first).
    dilation : int
        Dilation of the support in voxels, so that edge blur is not counted.

    Returns
    -------
    float in [0, 1]
    """
    obj = _as_complex(obj, "obj")
    sup = _support_values(support, obj.shape)
    if int(dilation) < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    if dilation:
        sup = ndimage.binary_dilation(sup, iterations=int(dilation))
    power = np.abs(obj).astype(np.float64) ** 2
    total = power.sum()
    if total == 0:
        raise ValueError("obj is identically zero")
    return float(power[~sup].sum() / total)


def diffracted_intensity(obj: np.ndarray) -> np.ndarray:
    """``|FT(obj)|**2`` of a centred object, centred, unitary FFT (the phasing engine's convention).

    Parameters
    ----------
    obj : ndarray, complex, shape (frames, rows, columns)
        Object with its centre at the array centre, as ``phase_retrieval`` returns it.

    Returns
    -------
    ndarray, real, same shape
        Photons per voxel when ``obj`` came from phasing an intensity in photons; in the
        input's precision (cast a complex64 object to complex128 for float64).
    """
    a = np.asarray(obj)
    return np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a), norm="ortho"))) ** 2


def poisson_deviance(counts: Any, predicted: Any, mask: Any) -> float:
    """Mean Poisson deviance per voxel of measured ``counts`` given ``predicted`` intensities.

    ``2 * (c * log(c / p) - (c - p))`` averaged over the voxels of ``mask`` (0 for a perfect
    prediction, about 1 per voxel for the noise-free expectation itself). Predictions are
    floored at 1e-6 photons so that a zero prediction of a counted photon stays finite.

    Parameters
    ----------
    counts, predicted : array-like, same shape
        Photon counts (>= 0) and the intensity a method predicts for them, photons.
    mask : array-like of bool, same shape
        The voxels scored.
    """
    c = np.asarray(counts, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if c.shape != p.shape:
        raise ValueError(f"counts and predicted shapes differ: {c.shape} vs {p.shape}")
    m = _as_mask(mask, c.shape, "mask")
    if not m.any():
        raise ValueError("mask selects no voxel")
    c, p = c[m], np.maximum(p[m], 1e-6)
    if (c < 0).any():
        raise ValueError("counts must be >= 0")
    term = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0) / p), 0.0)
    return float(np.mean(2.0 * (term - (c - p))))


def pcc_gap(truth: Any, pred: Any, gap_mask: Any, log: bool = True, *,
            batched: bool | None = None, chunk: int = 128) -> float | np.ndarray:
    """Pearson correlation over the gap voxels, the paper's equation 1.

    Parameters
    ----------
    truth, pred : array-like, shape ``spatial`` or ``(N, *spatial)``
        Ground-truth and inpainted portions (counts when ``log``, else already on the scale
        to compare). numpy arrays or CPU torch tensors.
    gap_mask : array-like of bool, shape ``spatial`` (shared) or the shape of ``truth``
        True on the gap voxels over which the correlation is taken.
    log : bool
        Compare ``log1p`` of the values (the paper compares log-scale portions).
    batched : bool, optional
        Whether axis 0 of ``truth`` is a batch axis. Default: batched when ``gap_mask`` has
        fewer dimensions than ``truth`` or when ``truth`` has 4 or more dimensions.
    chunk : int
        Portions processed at once (bounds the float64 temporaries).

    Returns
    -------
    float, or ndarray of shape (N,) when batched
        NaN for a portion whose gap has fewer than two voxels or no variance.
    """
    t = np.asarray(truth)
    p = np.asarray(pred)
    g = np.asarray(gap_mask)
    if t.shape != p.shape:
        raise ValueError(f"truth and pred shapes differ: {t.shape} vs {p.shape}")
    if np.iscomplexobj(t) or np.iscomplexobj(p):
        raise TypeError("truth and pred must be real")
    if batched is None:
        batched = g.ndim < t.ndim or t.ndim >= 4
    if batched and t.ndim < 2:
        raise ValueError("a batch needs arrays of at least 2 dimensions (N, ...)")
    spatial = t.shape[1:] if batched else t.shape
    if g.shape not in (spatial, t.shape):
        raise ValueError(f"gap_mask shape {g.shape} matches neither a portion {spatial} "
                         f"nor the input {t.shape}")
    g = _as_mask(g, g.shape, "gap_mask")
    if not g.any():
        raise ValueError("gap_mask selects no voxel")
    tb = t.reshape((t.shape[0] if batched else 1, -1))
    pb = p.reshape(tb.shape)
    gb = g.reshape((-1, tb.shape[1])) if g.shape == t.shape else g.reshape(1, -1)
    if log and ((tb < 0).any() or (pb < 0).any()):
        raise ValueError("log=True needs non-negative counts")
    out = np.empty(tb.shape[0])
    for start in range(0, tb.shape[0], max(int(chunk), 1)):
        sl = slice(start, start + max(int(chunk), 1))
        x = tb[sl].astype(np.float64)
        y = pb[sl].astype(np.float64)
        m = gb if gb.shape[0] == 1 else gb[sl]
        if log:
            np.log1p(x, out=x)
            np.log1p(y, out=y)
        n = m.sum(axis=1)
        xm = np.where(m, x, 0).sum(axis=1) / n
        ym = np.where(m, y, 0).sum(axis=1) / n
        dx = np.where(m, x - xm[:, None], 0)
        dy = np.where(m, y - ym[:, None], 0)
        num = (dx * dy).sum(axis=1)
        den = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where((den > 0) & (n > 1), num / den, np.nan)
    return out if batched else float(out[0])


# ----------------------------------------------------------------------------- report
def real_space_report(obj: np.ndarray, obj_true: np.ndarray, support_true: np.ndarray,
                      q_vector: float | Sequence[float], voxel_size: float | Sequence[float]) -> dict:
    """Compare a reconstruction with its ground truth as in the paper's section 2.6 / S7.

    The reconstruction is aligned to the truth (twin, translation, global phase) but its
    linear phase is kept: a phase ramp is a uniform strain, and the shift of the mean
    strain caused by a gap is one of the effects to measure (paper Supp. Fig. 17).

    Parameters
    ----------
    obj, obj_true : ndarray, complex, shape (frames, rows, columns)
        Reconstructed and ground-truth objects, centred.
    support_true : ndarray of bool, same shape
        Support of the ground truth; all comparisons are made inside it.
    q_vector : float or vector of 3 floats
        ``G`` in 1/m in the array frame (its direction is the strain direction), or ``|G|``
        alone with ``G`` along array axis 0.
    voxel_size : float or 3 floats
        Real-space voxel size in metres.

    Returns
    -------
    dict
        ``strain_rmse``, ``phase_std`` (rad), ``mean_strain``, ``mean_strain_true``,
        ``strain_std`` (spread of the reconstructed strain), ``spurious_modulus`` (fraction
        of ``|obj|**2`` outside the 1-voxel-dilated true support) and ``overlap`` (normalised
        complex overlap after alignment).
    """
    obj = _as_complex(obj, "obj")
    obj_true = _as_complex(obj_true, "obj_true")
    if obj.shape != obj_true.shape:
        raise ValueError(f"obj and obj_true shapes differ: {obj.shape} vs {obj_true.shape}")
    sup = _support_values(support_true, obj.shape)
    q = np.asarray(q_vector, dtype=float)
    direction = 0 if q.ndim == 0 else q
    aligned, params = align_to_reference(obj, obj_true, sup, remove_ramp=False, return_params=True)
    phase = unwrap_phase(np.angle(aligned), sup)
    phase_true = unwrap_phase(np.angle(obj_true), sup)
    eps = strain(displacement(phase, q), voxel_size, direction, support=sup)
    eps_true = strain(displacement(phase_true, q), voxel_size, direction, support=sup)
    sel = sup & np.isfinite(eps)
    return {
        "strain_rmse": strain_rmse(eps, eps_true, sup),
        "phase_std": phase_std(phase, phase_true, sup),
        "mean_strain": mean_strain(eps, sup),
        "mean_strain_true": mean_strain(eps_true, sup),
        "strain_std": float(np.std(eps[sel])),
        "spurious_modulus": spurious_modulus(aligned, sup),
        "overlap": params["overlap"],
    }


def truth_support(obj: np.ndarray, threshold: float) -> np.ndarray:
    """Support of the truth: smoothed modulus above ``threshold`` of its max, holes filled,
    restricted to voxels whose own modulus exceeds 5 % of the max.

    The 1-voxel smoothing keeps the modulus inhomogeneity of the simulated particles from
    punching holes in the support; the second condition keeps the smoothing from adding
    empty voxels around a sharp-edged object, whose phase is meaningless.
    """
    sup = ndimage.binary_fill_holes(support_from_modulus(obj, threshold, sigma=1.0))
    sup &= support_from_modulus(obj, 0.05)
    if not sup.any():
        raise ValueError("the ground-truth support is empty; lower support_threshold")
    return sup
