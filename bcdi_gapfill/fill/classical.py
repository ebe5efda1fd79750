"""Classical fills of detector-gap voxels: the baselines the deep-learning model must beat.

Arrays follow bcdi's ``(frames, rows, columns)`` order. A gap is a set of missing voxels,
typically a band of detector columns (axis 2) and/or rows (axis 1) over all frames, possibly
a cross, several bands or scattered pixels.

Public API
----------
``fill_gap(counts, gap_mask, method="biharmonic", *, log=True)``
    Fill the gap voxels of a 3D photon-count array with one of :data:`METHODS`.
``inpaint_biharmonic(image, mask)``
    Fast, exact equivalent of ``skimage.restoration.inpaint_biharmonic`` (single channel).
``interpolate_across_gap(image, mask, kind="linear", axes=(1, 2))``
    The 1D across-the-gap interpolation used by the ``nearest``/``linear``/``cubic`` fills.
``biharmonic_fill_torch(values, gap, n_iter=600, *, tol=1e-4, clip=True, init="linear")``
    Batched, matrix-free conjugate-gradient biharmonic fill in torch for ``(B, 1, D, H, W)``
    windows (CPU or GPU), the same discretisation as :func:`inpaint_biharmonic`.

Biharmonic discretisation (identical to scikit-image's)
-------------------------------------------------------
Let ``L`` be the graph Laplacian of the array grid with Neumann ends, i.e. the 7-point
Laplacian in which a neighbour outside the array is replaced by the voxel itself (``reflect``
/ ``replicate`` padding by one voxel): ``(L u)_i = sum_{j ~ i} (u_j - u_i)`` over the
in-array neighbours ``j``. scikit-image writes, for every masked voxel ``p``, the row ``p``
of ``laplace(laplace(delta_p))`` computed with scipy's ``reflect`` mode in the 5x5x5 box
around ``p`` clipped to the array; near the array edges that row is exactly row ``p`` of
``L @ L`` (``L`` is symmetric and the box contains every voxel whose degree matters). So its
system is ``(L^2)[M, M] x = -(L^2)[M, K] u_K``: the normal equations of
``min_x ||L (u_known + E x)||^2`` over the whole array, a symmetric positive-definite system
whenever at least one voxel is measured. Like scikit-image, the result is finally clipped
to ``[min, max]`` of the measured values.

Fast solution
-------------
With ``C = L[:, M]`` (assembled with numpy index arithmetic, no Python loop over voxels) the
matrix is ``C^T C`` and the right-hand side ``-C^T (L u_known)``.

* Detector gaps cover all frames, so the mask is usually constant along axis 0 (a single
  band is constant along two axes). Along such an axis the Neumann Laplacian is diagonalised
  by the orthonormal DCT-II (eigenvalues ``2 cos(pi k / n) - 2``); the 3D system splits
  exactly into one small 2D (or 1D) problem per frequency ``lam``:
  ``(P + 2 lam Q + lam^2 I) x_k = r_k`` with ``P = (L_R^2)[m, m]``, ``Q = L_R[m, m]`` on the
  reduced grid. These are solved with a sparse LU (SuperLU, symmetric mode) per frequency,
  or batched dense solves when they are tiny. This is exact, not an approximation.
* Otherwise (a mask varying along every axis) the 3D system is split into independent
  blocks (connected components of the matrix graph): small ones (<= 20000 unknowns) are
  solved with SuperLU, large ones by conjugate gradient to a relative residual of 1e-11,
  preconditioned by the exact spectral solve on the superset of the mask made of whole
  lines (good when the mask is mostly full lines, e.g. a cross with stray pixels) or by
  the diagonal. (SuperLU on a large 3D slab fills in badly: minutes and >10 GB for a
  128^3 cross of width 12.)
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.fft as sfft
from scipy import sparse
from scipy.sparse import csgraph, linalg as spla

from bcdi_gapfill.nn.prefill import biharmonic_fill_torch

__all__ = [
    "METHODS",
    "fill_gap",
    "inpaint_biharmonic",
    "interpolate_across_gap",
    "biharmonic_fill_torch",
]

METHODS = ("zero", "nearest", "linear", "cubic", "biharmonic")
_LINE_KINDS = ("nearest", "linear", "cubic")


# --------------------------------------------------------------------------------------
# validation


def _validate(counts, gap_mask, *, log: bool) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(counts, np.ndarray):
        if hasattr(counts, "detach"):  # a torch tensor would be copied silently otherwise
            raise ValueError("counts must be a numpy array, not a torch tensor")
        counts = np.asarray(counts)
    if counts.ndim != 3:
        raise ValueError(f"counts must be a 3D (frames, rows, columns) array, got shape {counts.shape}")
    if counts.dtype == bool or not (np.issubdtype(counts.dtype, np.integer)
                                    or np.issubdtype(counts.dtype, np.floating)):
        raise ValueError(f"counts must be a real (integer or float) array, got dtype {counts.dtype}")
    if np.ma.isMaskedArray(counts):
        raise ValueError("counts must be a plain ndarray, not a masked array")
    if counts.size == 0:
        raise ValueError(f"counts is empty (shape {counts.shape})")
    if not isinstance(gap_mask, np.ndarray):
        gap_mask = np.asarray(gap_mask)
    if gap_mask.dtype != bool:
        raise ValueError(f"gap_mask must be a boolean array (True = missing), got dtype {gap_mask.dtype}")
    if gap_mask.shape != counts.shape:
        raise ValueError(f"gap_mask shape {gap_mask.shape} differs from counts shape {counts.shape}")
    known = ~gap_mask
    if not known.any():
        raise ValueError("gap_mask masks every voxel: nothing measured to fill from")
    measured = counts[known]
    if np.issubdtype(counts.dtype, np.floating):
        bad = ~np.isfinite(measured)
        if bad.any():
            n_nan = int(np.isnan(measured).sum())
            raise ValueError(f"counts has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values "
                             "among the measured (non-gap) voxels")
    if log and measured.size and measured.min() < 0:
        raise ValueError(f"counts has {int((measured < 0).sum())} negative measured values "
                         f"(min {measured.min()}): log=True needs counts >= 0; mark masked pixels (PyNX "
                         "stores them as negative intensities) in gap_mask, or use log=False for "
                         "background-subtracted data")
    return counts, gap_mask


# --------------------------------------------------------------------------------------
# public entry point


def fill_gap(counts: np.ndarray, gap_mask: np.ndarray, method: str = "biharmonic", *,
             log: bool = True) -> np.ndarray:
    """Fill the gap voxels of a 3D BCDI pattern with a classical method.

    Parameters
    ----------
    counts : ndarray, shape (frames, rows, columns), real
        Photon counts. Values in the gap are ignored (they may be NaN); the measured voxels
        must be finite (and >= 0 when ``log`` is True).
    gap_mask : ndarray of bool, same shape
        True where the voxel is missing.
    method : {"zero", "nearest", "linear", "cubic", "biharmonic"}
        ``zero``: gap set to 0. ``nearest``/``linear``/``cubic``: 1D interpolation along the
        detector axis across the gap (see :func:`interpolate_across_gap`). ``biharmonic``:
        scikit-image's biharmonic inpainting, solved fast (see :func:`inpaint_biharmonic`).
    log : bool
        Fill ``log1p(counts)`` and map back with ``expm1`` (ignored by ``zero``).

    Returns
    -------
    ndarray float32, same shape
        ``counts.astype(float32)`` with the gap voxels replaced by finite values >= 0. The
        measured voxels are bit-identical to ``counts.astype(float32)`` (to ``counts`` for
        float32 input or integer counts below 2**24). The inputs are never modified.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")
    counts, gap_mask = _validate(counts, gap_mask, log=log)
    out = counts.astype(np.float32, copy=True)
    if not gap_mask.any():
        return out
    if method == "zero":
        out[gap_mask] = 0.0
        return out

    work = counts.astype(np.float64, copy=True)
    work[gap_mask] = 0.0  # gap values (possibly NaN) never enter a computation
    if log:
        work = np.log1p(work)
    if method == "biharmonic":
        filled = inpaint_biharmonic(work, gap_mask)
    else:
        filled = interpolate_across_gap(work, gap_mask, kind=method)
    values = filled[gap_mask]
    if log:
        values = np.expm1(values)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)  # defensive, never expected
    out[gap_mask] = np.clip(values, 0.0, np.finfo(np.float32).max).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------
# 1D interpolation across the gap


def _line_neighbours(known: np.ndarray):
    """For every position of every line (last axis), the two nearest measured positions on
    each side: ``l1 > l2`` on the left (-1 if none), ``r1 < r2`` on the right (n if none)."""
    n = known.shape[-1]
    pos = np.arange(n)
    left_incl = np.maximum.accumulate(np.where(known, pos, -1), axis=-1)  # nearest known <= i
    right_incl = np.minimum.accumulate(np.where(known, pos, n)[..., ::-1], axis=-1)[..., ::-1]
    left_strict = np.concatenate([np.full(known.shape[:-1] + (1,), -1), left_incl[..., :-1]], axis=-1)
    right_strict = np.concatenate([right_incl[..., 1:], np.full(known.shape[:-1] + (1,), n)], axis=-1)
    l1 = left_strict
    r1 = right_strict
    # second neighbour: the strict-left neighbour of l1 (resp. strict-right of r1)
    l2 = np.where(l1 >= 0, np.take_along_axis(left_strict, np.maximum(l1, 0), axis=-1), -1)
    r2 = np.where(r1 < n, np.take_along_axis(right_strict, np.minimum(r1, n - 1), axis=-1), n)
    return l1, l2, r1, r2


def _lagrange(x, nodes, values):
    """Lagrange interpolation at ``x`` through ``nodes``/``values`` (lists of arrays), with
    per-element validity handled by the caller."""
    result = np.zeros_like(x, dtype=np.float64)
    for j, (xj, yj) in enumerate(zip(nodes, values)):
        w = np.ones_like(result)
        for k, xk in enumerate(nodes):
            if k != j:
                w *= (x - xk) / (xj - xk)
        result += w * yj
    return result


def _interp_lines(v: np.ndarray, known: np.ndarray, kind: str):
    """1D interpolation along the last axis at every unknown position of ``v``.

    Returns ``(coords, value, weight, two_sided, one_sided)``: ``coords`` is
    ``np.nonzero(~known)`` and the other arrays are 1D over those positions. ``weight`` is
    ``1 / span`` of the gap for two-sided voxels and ``1 / distance`` to the measured
    neighbour for one-sided ones.
    """
    n = v.shape[-1]
    l1f, l2f, r1f, r2f = _line_neighbours(known)
    coords = np.nonzero(~known)
    lines = coords[:-1]
    l1, l2, r1, r2 = l1f[coords], l2f[coords], r1f[coords], r2f[coords]
    has_l, has_r = l1 >= 0, r1 < n
    two = has_l & has_r
    one = has_l ^ has_r
    x = coords[-1].astype(np.float64)

    def val(idx):
        return v[lines + (np.clip(idx, 0, n - 1),)]

    vl1, vr1 = val(l1), val(r1)
    xl1, xr1 = l1.astype(np.float64), r1.astype(np.float64)
    span = np.where(two, xr1 - xl1, 1.0)
    if kind == "nearest":
        # ties (voxel exactly mid-gap) go to the lower-index neighbour
        two_val = np.where(x - xl1 <= xr1 - x, vl1, vr1)
    elif kind == "linear":
        t = (x - xl1) / span
        two_val = (1.0 - t) * vl1 + t * vr1
    elif kind == "cubic":
        # Lagrange through the two nearest measured voxels on each side (4 points);
        # 3 points (quadratic) if one side has a single measured voxel, 2 (linear) if both.
        has_l2, has_r2 = two & (l2 >= 0), two & (r2 < n)
        vl2, vr2 = val(l2), val(r2)
        xl2 = np.where(has_l2, l2, l1 - 1).astype(np.float64)  # dummy distinct nodes where
        xr2 = np.where(has_r2, r2, r1 + 1).astype(np.float64)  # the neighbour is absent
        c4 = _lagrange(x, [xl2, xl1, xr1, xr2], [vl2, vl1, vr1, vr2])
        c3l = _lagrange(x, [xl2, xl1, xr1], [vl2, vl1, vr1])
        c3r = _lagrange(x, [xl1, xr1, xr2], [vl1, vr1, vr2])
        t = (x - xl1) / span
        c2 = (1.0 - t) * vl1 + t * vr1
        two_val = np.where(has_l2 & has_r2, c4, np.where(has_l2, c3l, np.where(has_r2, c3r, c2)))
    else:  # pragma: no cover - checked by the caller
        raise ValueError(kind)
    # one-sided (gap reaching the array edge): constant extrapolation of the nearest measured
    one_val = np.where(has_l, vl1, vr1)
    one_dist = np.where(one, np.where(has_l, x - xl1, xr1 - x), 1.0)
    value = np.where(two, two_val, np.where(one, one_val, 0.0))
    weight = np.where(two, 1.0 / span, np.where(one, 1.0 / one_dist, 0.0))
    return coords, value, weight, two, one


def interpolate_across_gap(image: np.ndarray, mask: np.ndarray, kind: str = "linear",
                           axes: Sequence[int] = (1, 2)) -> np.ndarray:
    """Fill ``mask`` voxels by 1D interpolation along lines crossing the gap.

    For every missing voxel and every axis in ``axes`` (by default the detector rows and
    columns), the line through the voxel along that axis is searched for the nearest
    measured voxels on each side:

    * two-sided along at least one axis: the 1D interpolant (``nearest``: value of the
      closer neighbour, ties to the lower index; ``linear``: linear between the two
      neighbours; ``cubic``: Lagrange cubic through the two nearest measured voxels on each
      side, quadratic/linear when a side has fewer) along each two-sided axis, averaged
      with weights ``1 / span`` of the gap along that axis (a single band uses only the
      axis across it, so a linear ramp is reproduced exactly; an isolated pixel averages
      both directions);
    * one-sided only (a gap reaching the array edge): constant extrapolation of the nearest
      measured voxel, averaged over such axes with weights ``1 / distance``;
    * no measured voxel on any line (the intersection of a cross, whose rows and columns are
      entirely missing): left for a next pass in which the voxels filled so far count as
      measured; a cross intersection is thus interpolated across both bands from the
      interpolated arms. If a pass fills nothing, all axes of the array are used.

    Returns a float64 array; ``image`` is not modified.
    """
    if kind not in _LINE_KINDS:
        raise ValueError(f"unknown kind {kind!r}, expected one of {_LINE_KINDS}")
    out = np.array(image, dtype=np.float64, copy=True)
    missing = np.array(mask, dtype=bool, copy=True)
    if missing.shape != out.shape:
        raise ValueError(f"mask shape {missing.shape} differs from image shape {out.shape}")
    if missing.all():
        raise ValueError("mask masks every voxel")
    out[missing] = 0.0
    axes = tuple(a % out.ndim for a in axes)
    all_axes = tuple(range(out.ndim))
    use_axes = axes
    while missing.any():
        flat_missing = np.flatnonzero(missing)
        n_miss = flat_missing.size
        acc_two, w_two = np.zeros(n_miss), np.zeros(n_miss)
        acc_one, w_one = np.zeros(n_miss), np.zeros(n_miss)
        # a voxel informed by one axis only takes that axis' value as is (no w*v/w rounding)
        last_two, n_two = np.zeros(n_miss), np.zeros(n_miss, np.int8)
        last_one, n_one = np.zeros(n_miss), np.zeros(n_miss, np.int8)
        for a in use_axes:
            if out.shape[a] < 2:
                continue
            coords, value, weight, two, one = _interp_lines(
                np.moveaxis(out, a, -1), np.moveaxis(~missing, a, -1), kind)
            order = list(range(out.ndim))
            order.insert(a, order.pop())  # coords of the moved view -> original axes
            flat = np.ravel_multi_index(tuple(coords[i] for i in order), out.shape)
            pos = np.searchsorted(flat_missing, flat)
            wt = np.where(two, weight, 0.0)
            wo = np.where(one, weight, 0.0)
            acc_two[pos] += wt * value  # pos is a permutation: no repeated index
            w_two[pos] += wt
            acc_one[pos] += wo * value
            w_one[pos] += wo
            last_two[pos[two]] = value[two]
            n_two[pos[two]] += 1
            last_one[pos[one]] = value[one]
            n_one[pos[one]] += 1
        has_two = w_two > 0
        has_one = ~has_two & (w_one > 0)
        if not (has_two.any() or has_one.any()):
            if use_axes == all_axes:  # cannot happen when at least one voxel is measured
                raise RuntimeError("interpolation made no progress")
            use_axes = all_axes
            continue
        fill = np.where(has_two, np.where(n_two == 1, last_two, acc_two / np.where(has_two, w_two, 1.0)),
                        np.where(n_one == 1, last_one, acc_one / np.where(has_one, w_one, 1.0)))
        done = has_two | has_one
        out.ravel()[flat_missing[done]] = fill[done]
        missing.ravel()[flat_missing[done]] = False
        use_axes = axes
    return out


# --------------------------------------------------------------------------------------
# biharmonic: numpy/scipy path


def _neumann_laplacian(u: np.ndarray) -> np.ndarray:
    """Graph Laplacian with Neumann ends: ``sum_{j ~ i, j in array} (u_j - u_i)``."""
    out = np.zeros_like(u)
    for a in range(u.ndim):
        if u.shape[a] < 2:
            continue
        d = np.diff(u, axis=a)
        lo = [slice(None)] * u.ndim
        hi = [slice(None)] * u.ndim
        lo[a] = slice(0, -1)
        hi[a] = slice(1, None)
        out[tuple(lo)] += d
        out[tuple(hi)] -= d
    return out


def _laplacian_columns(shape: tuple[int, ...], flat_idx: np.ndarray):
    """``C = L[:, idx]`` of the Neumann grid Laplacian, restricted to the rows it touches.

    Returns ``(C, rows)``: C is a CSR matrix of shape ``(len(rows), len(idx))`` and ``rows``
    the flat grid indices of its rows (sorted)."""
    n = flat_idx.size
    strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    col = np.arange(n)
    r_parts, c_parts, v_parts = [], [], []
    deg = np.zeros(n, dtype=np.float64)
    for a, (size, stride) in enumerate(zip(shape, strides)):
        coord = (flat_idx // stride) % size
        for sel, off in ((coord > 0, -stride), (coord < size - 1, stride)):
            r_parts.append(flat_idx[sel] + off)
            c_parts.append(col[sel])
            v_parts.append(np.ones(int(sel.sum())))
            deg += sel
    r_parts.append(flat_idx)
    c_parts.append(col)
    v_parts.append(-deg)
    r = np.concatenate(r_parts)
    rows, r_compact = np.unique(r, return_inverse=True)
    c_mat = sparse.csr_matrix((np.concatenate(v_parts), (r_compact, np.concatenate(c_parts))),
                              shape=(rows.size, n))
    return c_mat, rows


def _biharmonic_system(shape, flat_idx):
    """``P = (L^2)[M, M]``, ``Q = L[M, M]`` and ``(C, rows)`` for ``M = flat_idx``."""
    c_mat, rows = _laplacian_columns(shape, flat_idx)
    p_mat = (c_mat.T @ c_mat).tocsc()
    pos = np.searchsorted(rows, flat_idx)  # flat_idx is a subset of rows
    q_mat = c_mat[pos].tocsc()
    return p_mat, q_mat, c_mat, rows


def _spd_factor(a_mat):
    """Sparse LU (SuperLU, symmetric mode) of a symmetric positive-definite matrix."""
    return spla.splu(a_mat.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                     options={"SymmetricMode": True})


def _constant_axes(mask: np.ndarray) -> list[int]:
    """Axes along which ``mask`` does not vary."""
    axes = []
    for a in range(mask.ndim):
        first = np.take(mask, [0], axis=a)
        if np.array_equal(np.broadcast_to(first, mask.shape), mask):
            axes.append(a)
    return axes


class _SpectralSolver:
    """Exact solver of ``(L^2)[M, M] x = r`` for a mask constant along the axes ``s_axes``.

    The Neumann Laplacian along each such axis is diagonalised by the orthonormal DCT-II
    (eigenvalues ``2 cos(pi k / n) - 2``), which splits the system exactly into one reduced
    problem per frequency ``lam`` (sum over the axes): ``(P + 2 lam Q + lam^2 I) x_k = r_k``
    on the grid of the other axes. They are factorised once (batched dense inverses when
    tiny, SuperLU otherwise); :meth:`solve` costs two DCTs and the triangular solves.
    Vectors are ordered like ``np.flatnonzero(mask)``.
    """

    _DENSE_MAX_ENTRIES = 8e6  # n_freq * n_red**2 for the batched dense inverses (64 MB)

    def __init__(self, mask: np.ndarray, s_axes: list[int]):
        nd = mask.ndim
        self.s_axes = list(s_axes)
        r_axes = [a for a in range(nd) if a not in self.s_axes]
        self.s_shape = tuple(mask.shape[a] for a in self.s_axes)
        r_shape = tuple(mask.shape[a] for a in r_axes)
        perm = self.s_axes + r_axes
        m_red = np.transpose(mask, perm)[(0,) * len(self.s_axes)]
        red_idx = np.flatnonzero(m_red)
        self.n_red = red_idx.size
        self.n_freq = int(np.prod(self.s_shape))
        # position of each (frequency-grid point, reduced unknown) in flatnonzero(mask) order
        flat_ids = np.arange(mask.size).reshape(mask.shape)
        layout = np.transpose(flat_ids, perm).reshape(self.s_shape + (-1,))[..., red_idx]
        self.pos = np.searchsorted(np.flatnonzero(mask), layout)
        lam = np.zeros(self.s_shape)
        for i, n in enumerate(self.s_shape):
            shp = [1] * len(self.s_shape)
            shp[i] = n
            lam = lam + (2.0 * np.cos(np.pi * np.arange(n) / n) - 2.0).reshape(shp)
        self.lam = lam.ravel()

        p_mat, q_mat, _, _ = _biharmonic_system(r_shape, red_idx)
        self.dense = self.n_freq * self.n_red ** 2 <= self._DENSE_MAX_ENTRIES
        if self.dense:  # tiny reduced problems (a single band: 1D, w unknowns)
            p_d, q_d = p_mat.toarray(), q_mat.toarray()
            lm = self.lam[:, None, None]
            a = p_d[None] + 2.0 * lm * q_d[None] + lm * lm * np.eye(self.n_red)[None]
            self.inv = np.linalg.inv(a)
        else:
            eye = sparse.identity(self.n_red, format="csc")
            self.lus = [_spd_factor(p_mat + (2.0 * lm) * q_mat + (lm * lm) * eye)
                        for lm in self.lam]

    def solve(self, r: np.ndarray) -> np.ndarray:
        axes = tuple(range(len(self.s_axes)))
        r_hat = sfft.dctn(r[self.pos], type=2, norm="ortho", axes=axes)
        r_hat = r_hat.reshape(self.n_freq, self.n_red)
        if self.dense:
            x_hat = np.einsum("kij,kj->ki", self.inv, r_hat)
        else:
            x_hat = np.empty_like(r_hat)
            for k, lu in enumerate(self.lus):
                x_hat[k] = lu.solve(r_hat[k])
        x = sfft.idctn(x_hat.reshape(self.s_shape + (self.n_red,)), type=2, norm="ortho", axes=axes)
        out = np.empty_like(r)
        out[self.pos] = x
        return out


_LU_MAX_UNKNOWNS = 20000  # larger 3D components go to PCG (SuperLU fill-in explodes in 3D)


def _solve_general(mask: np.ndarray, a_mat, rhs: np.ndarray, rtol: float = 1e-11) -> np.ndarray:
    """Solve ``A x = rhs`` (``A = (L^2)[M, M]``, M not constant along any axis).

    Independent blocks (connected components of the matrix graph) are solved apart: small
    ones with SuperLU (grouped), large ones together with preconditioned CG. The
    preconditioner is the exact spectral solve on the superset of M made of the whole lines
    along the axis where that superset is smallest (restricted back to M), when that
    superset is at most 4x larger than M (masks that are mostly full lines, e.g. a cross
    plus a few stray pixels); else the diagonal (Jacobi).
    """
    flat_idx = np.flatnonzero(mask)
    n_comp, labels = csgraph.connected_components(a_mat, directed=False)
    sizes = np.bincount(labels, minlength=n_comp)
    big = sizes[labels] > _LU_MAX_UNKNOWNS
    x = np.zeros_like(rhs)
    a_csr = a_mat.tocsr()

    small_idx = np.flatnonzero(~big)
    if small_idx.size:
        order = small_idx[np.argsort(labels[small_idx], kind="stable")]
        lab = labels[order]
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        bounds = np.r_[starts, order.size]
        i = 0
        while i < len(starts):  # group whole components up to _LU_MAX_UNKNOWNS unknowns
            j = i + 1
            while j < len(starts) and bounds[j + 1] - bounds[i] <= _LU_MAX_UNKNOWNS:
                j += 1
            idx = order[bounds[i]:bounds[j]]
            x[idx] = _spd_factor(a_csr[idx][:, idx]).solve(rhs[idx])
            i = j

    big_idx = np.flatnonzero(big)
    if big_idx.size:
        a_big = a_csr[big_idx][:, big_idx]
        sub_mask = np.zeros(mask.shape, dtype=bool)
        sub_mask.ravel()[flat_idx[big_idx]] = True
        best = None
        for a in range(mask.ndim):
            sup = np.broadcast_to(sub_mask.any(axis=a, keepdims=True), mask.shape)
            n_sup = int(np.count_nonzero(sup))
            if n_sup < sup.size and (best is None or n_sup < best[0]):
                best = (n_sup, np.ascontiguousarray(sup))
        if best is not None and best[0] <= 4 * big_idx.size:
            sup = best[1]
            solver = _SpectralSolver(sup, _constant_axes(sup))
            pos = np.searchsorted(np.flatnonzero(sup), np.flatnonzero(sub_mask))

            def precond(r):
                e = np.zeros(best[0])
                e[pos] = r
                return solver.solve(e)[pos]
        else:
            inv_diag = 1.0 / a_big.diagonal()

            def precond(r):
                return inv_diag * r
        m_op = spla.LinearOperator(a_big.shape, matvec=precond, dtype=np.float64)
        maxiter = 20 * int(np.sqrt(big_idx.size)) + 1000
        try:
            sol, info = spla.cg(a_big, rhs[big_idx], rtol=rtol, atol=0.0, M=m_op, maxiter=maxiter)
        except TypeError:  # scipy < 1.12 names it tol
            sol, info = spla.cg(a_big, rhs[big_idx], tol=rtol, atol=0.0, M=m_op, maxiter=maxiter)
        if info != 0:
            warnings.warn(f"biharmonic CG did not reach rtol={rtol} in {info} iterations; "
                          "the fill is approximate", RuntimeWarning, stacklevel=3)
        x[big_idx] = sol
    return x


def inpaint_biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Biharmonic inpainting, equivalent to ``skimage.restoration.inpaint_biharmonic``.

    Same discretisation (Laplacian squared with scikit-image's treatment of the array edges,
    see the module docstring) and the same final clipping to the range of the measured
    values, solved fast: exactly by DCT along the axes the mask is constant along plus
    direct solves of the reduced problems; otherwise (a mask varying along every axis) by
    SuperLU on small independent blocks and preconditioned CG (relative residual 1e-11) on
    large ones. ``image`` may have any number of dimensions (one channel); the result is
    float64, ``image`` is not modified.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    out = np.array(image, dtype=np.float64, copy=True)
    if not mask.any():
        return out
    if mask.all():
        raise ValueError("mask masks every voxel: nothing measured to fill from")
    known_vals = out[~mask]
    lo, hi = known_vals.min(), known_vals.max()
    out[mask] = 0.0
    flat_idx = np.flatnonzero(mask)
    rhs = -_neumann_laplacian(_neumann_laplacian(out)).ravel()[flat_idx]  # -(L^2 u_known)[M]

    s_axes = _constant_axes(mask)
    if s_axes:
        x = _SpectralSolver(mask, s_axes).solve(rhs)
    else:
        p_mat, _, _, _ = _biharmonic_system(mask.shape, flat_idx)
        x = _solve_general(mask, p_mat, rhs)
    out.ravel()[flat_idx] = x
    np.clip(out, lo, hi, out=out)
    return out


# --------------------------------------------------------------------------------------
# biharmonic: torch, batched, matrix-free CG
